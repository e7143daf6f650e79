import MTLCore
import MTLNN

/// One task's loss behind one interface (the losses of MTLNN have different target layouts).
/// `forward` returns the local sum and count; the trainer divides by the GLOBAL count.
public final class TaskLoss {
    public enum Kind: String { case ce, l1, cosine, bce }
    public let kind: Kind
    let ce: CrossEntropyLoss?
    let l1: MaskedL1Loss?
    let cos: NormalCosineLoss?
    let bce: BCEWithLogitsLoss?

    public init(kind: String, posWeight: Float = 1) throws {
        guard let k = Kind(rawValue: kind) else { throw MTLError("tasks.*.loss: expected ce|l1|cosine|bce, found '\(kind)'") }
        self.kind = k
        ce = k == .ce ? CrossEntropyLoss(ignoreIndex: -1) : nil
        l1 = k == .l1 ? MaskedL1Loss() : nil
        cos = k == .cosine ? NormalCosineLoss() : nil
        bce = k == .bce ? BCEWithLogitsLoss(posWeight: posWeight) : nil
    }

    public func forward(_ pred: Tensor, _ target: Tensor) -> LossSum {
        switch kind {
        case .ce: return ce!.forward(pred, target)
        case .l1: return l1!.forward(pred, target)
        case .cosine: return cos!.forward(pred, target)
        case .bce: return bce!.forward(pred, target)
        }
    }

    public func backward(scale: Float) -> Tensor {
        switch kind {
        case .ce: return ce!.backward(scale: scale)
        case .l1: return l1!.backward(scale: scale)
        case .cosine: return cos!.backward(scale: scale)
        case .bce: return bce!.backward(scale: scale)
        }
    }

    /// Output channels a head needs for this loss and task.
    public static func channels(task: String, loss: String, classes: Int) -> Int {
        switch loss {
        case "ce": return classes
        case "cosine": return 3
        default: return 1
        }
    }
}
