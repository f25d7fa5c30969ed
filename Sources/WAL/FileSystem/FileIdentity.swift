import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Which file a path or descriptor is: device and inode, and how many names it has.
public struct FileIdentity: Sendable, Equatable {
    public var device: UInt64
    public var inode: UInt64
    /// Hard links; 0 for a file that was unlinked while open.
    public var links: UInt64

    /// Whether two identities name the same file (the link count aside).
    public func isSameFile(as other: FileIdentity) -> Bool {
        self.device == other.device && self.inode == other.inode
    }

    init(_ info: stat) {
        self.device = UInt64(info.st_dev)
        self.inode = UInt64(info.st_ino)
        self.links = UInt64(info.st_nlink)
    }
}
