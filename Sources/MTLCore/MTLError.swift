/// A user-facing error: one line that names the file/key, what was expected and what was found.
/// The command line prints `error: <message>` and exits non-zero; never a stack trace.
public struct MTLError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
