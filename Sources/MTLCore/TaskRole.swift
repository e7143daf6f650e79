/// In auxiliary learning one task is the primary (the one we care about) and the
/// others are auxiliary; methods such as IAL, GCS and OL-AUX treat them differently.
public enum TaskRole: String, Sendable, Equatable, CaseIterable {
    case primary, auxiliary
}
