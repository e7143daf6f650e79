import Foundation

/// The learning rate at each (0-based) step: a linear warm-up from warmup_factor·lr to lr
/// over the first warmup_steps steps, then the named schedule over the remaining
/// T = totalSteps − warmup_steps steps, with s = step − warmup_steps:
///   constant  lr
///   step      lr·γ^⌊s/step_size⌋
///   poly      lr·(1 − s/T)^power
///   cosine    min_lr + ½(lr − min_lr)(1 + cos(π·s/T))
/// Steps past the end keep the last value (s is clamped to T).
public struct LRSchedule {
    public let cfg: ScheduleConfig
    public let baseLR: Double
    public let totalSteps: Int

    public init(_ cfg: ScheduleConfig, baseLR: Double, totalSteps: Int) {
        self.cfg = cfg
        self.baseLR = baseLR
        self.totalSteps = totalSteps
    }

    public func lr(step: Int) -> Double {
        let warmup = cfg.warmupSteps
        if step < warmup {
            let f = cfg.warmupFactor
            return baseLR * (f + (1 - f) * Double(step) / Double(warmup))
        }
        let T = Double(max(totalSteps - warmup, 0))
        let s = min(Double(step - warmup), T)
        switch cfg.name {
        case "step":
            return baseLR * pow(cfg.gamma, floor(s / Double(cfg.stepSize)))
        case "poly":
            return T > 0 ? baseLR * pow(1 - s / T, cfg.power) : baseLR
        case "cosine":
            return T > 0 ? cfg.minLR + 0.5 * (baseLR - cfg.minLR) * (1 + cos(Double.pi * s / T)) : baseLR
        default:
            return baseLR
        }
    }
}
