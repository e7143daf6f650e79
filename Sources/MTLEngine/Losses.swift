import MTLCore
import MTLNN

/// One task's loss behind one interface (the losses of MTLNN have different target layouts).
/// `forward` returns the local sum and count; the trainer divides by the GLOBAL count.
public final class TaskLoss {
    /// normal_l1, balanced_bce and saliency_ce are ATRC's normals, edge and saliency losses; normal_mse is
    /// MT-CP's released normals loss (MTLCore.LossKind).
    public enum Kind: String {
        case ce, l1, cosine, bce, normalL1 = "normal_l1", balancedBCE = "balanced_bce", saliencyCE = "saliency_ce"
        case normalMSE = "normal_mse"
    }
    public let kind: Kind
    let ce: CrossEntropyLoss?
    let l1: MaskedL1Loss?
    let cos: NormalCosineLoss?
    let bce: BCEWithLogitsLoss?
    let nl1: NormalL1Loss?
    let bbce: BalancedBCEWithLogitsLoss?
    let sce: BalancedCrossEntropyLoss?
    let nmse: NormalMSELoss?

    public init(kind: String, posWeight: Float = 1) throws {
        guard let k = Kind(rawValue: kind) else {
            throw MTLError("tasks.*.loss: expected \(LossKind.names.joined(separator: "|")), found '\(kind)'")
        }
        self.kind = k
        ce = k == .ce ? CrossEntropyLoss(ignoreIndex: -1) : nil
        l1 = k == .l1 ? MaskedL1Loss() : nil
        cos = k == .cosine ? NormalCosineLoss() : nil
        bce = k == .bce ? BCEWithLogitsLoss(posWeight: posWeight) : nil
        nl1 = k == .normalL1 ? NormalL1Loss() : nil
        // balanced_bce reads pos_weight as ATRC's positive-class weight w ∈ (0, 1).
        bbce = k == .balancedBCE ? BalancedBCEWithLogitsLoss(positiveWeight: posWeight) : nil
        // The loader gives binary maps with -1 where the file has 255 (ignore).
        sce = k == .saliencyCE ? BalancedCrossEntropyLoss(ignoreIndex: -1) : nil
        nmse = k == .normalMSE ? NormalMSELoss() : nil
    }

    public func forward(_ pred: Tensor, _ target: Tensor) -> LossSum {
        switch kind {
        case .ce: return ce!.forward(pred, target)
        case .l1: return l1!.forward(pred, target)
        case .cosine: return cos!.forward(pred, target)
        case .bce: return bce!.forward(pred, target)
        case .normalL1: return nl1!.forward(pred, target)
        case .balancedBCE: return bbce!.forward(pred, target)
        case .saliencyCE: return sce!.forward(pred, target)
        case .normalMSE: return nmse!.forward(pred, target)
        }
    }

    public func backward(scale: Float) -> Tensor {
        switch kind {
        case .ce: return ce!.backward(scale: scale)
        case .l1: return l1!.backward(scale: scale)
        case .cosine: return cos!.backward(scale: scale)
        case .bce: return bce!.backward(scale: scale)
        case .normalL1: return nl1!.backward(scale: scale)
        case .balancedBCE: return bbce!.backward(scale: scale)
        case .saliencyCE: return sce!.backward(scale: scale)
        case .normalMSE: return nmse!.backward(scale: scale)
        }
    }

    /// Output channels a head needs for this loss and task (LossKind).
    public static func channels(task: String, loss: String, classes: Int) -> Int {
        LossKind.named(loss)?.outputChannels(classes: classes) ?? 1
    }
}
