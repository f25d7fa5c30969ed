/// Finds keys that appear more than once in one JSON object, at every nesting level.
///
/// RFC 8259 leaves duplicate names undefined, and readers disagree (ClickHouse's
/// `visitParamExtract*` takes the first value, `JSON.parse` the last), so an event holding
/// one would mean different things to different readers. Keys are compared byte for byte,
/// as JSON does: a precomposed and a decomposed "é" are two keys.
enum DuplicateKeys {
    /// JSON Pointers (RFC 6901), relative to `value`, of every repeated key after its first
    /// occurrence, in document order. Linear in the size of `value`.
    static func pointers(in value: JSONValue) -> [String] {
        var path: [Component] = []
        var found: [String] = []
        Self.search(value, path: &path, found: &found)
        return found
    }

    private enum Component {
        case key(String)
        case index(Int)
    }

    /// Objects up to this size are searched pairwise, without allocating; larger ones hash.
    private static let pairwiseLimit = 16

    private static func search(_ value: JSONValue, path: inout [Component], found: inout [String]) {
        switch value {
        case .object(let members):
            if members.count <= Self.pairwiseLimit {
                for index in members.indices.dropFirst()
                where members[..<index].contains(where: { Self.same($0.0, members[index].0) }) {
                    found.append(Self.pointer(path, members[index].0))
                }
            } else {
                var seen = Set<Key>(minimumCapacity: members.count)
                for (key, _) in members where !seen.insert(Key(text: key)).inserted {
                    found.append(Self.pointer(path, key))
                }
            }
            for (key, member) in members where member.isContainer {
                path.append(.key(key))
                Self.search(member, path: &path, found: &found)
                path.removeLast()
            }
        case .array(let elements):
            for (index, element) in elements.enumerated() where element.isContainer {
                path.append(.index(index))
                Self.search(element, path: &path, found: &found)
                path.removeLast()
            }
        default:
            break
        }
    }

    /// Byte-wise equality; the count (O(1) for native strings) settles most pairs.
    private static func same(_ a: String, _ b: String) -> Bool {
        a.utf8.count == b.utf8.count && a.utf8.elementsEqual(b.utf8)
    }

    private static func pointer(_ path: [Component], _ key: String) -> String {
        var pointer = ""
        for component in path {
            switch component {
            case .key(let key): pointer += "/" + escapePointer(key)
            case .index(let index): pointer += "/" + String(index)
            }
        }
        return pointer + "/" + escapePointer(key)
    }

    /// A key hashed and compared by its UTF-8 bytes (String's own == is Unicode-canonical).
    private struct Key: Hashable {
        var text: String

        static func == (lhs: Key, rhs: Key) -> Bool { DuplicateKeys.same(lhs.text, rhs.text) }

        func hash(into hasher: inout Hasher) {
            var text = self.text
            text.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        }
    }
}

extension JSONValue {
    fileprivate var isContainer: Bool {
        switch self {
        case .object, .array: true
        default: false
        }
    }
}
