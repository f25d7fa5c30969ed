/// The kinds of frame a segment holds.
enum FrameType: UInt8, Sendable {
    /// Events appended by clients.
    case data = 1
    /// The seal: the last frame of a finished segment, summarising it.
    case footer = 2
}
