import ClickHouse
import Kafka

/// The settings each insert of the loader carries, by server version: set explicitly, so that
/// "ClickHouse confirmed the insert" means the same on every version (docs/clickhouse.md, "What
/// a confirmed insert guarantees").
enum InsertSettings {
    /// `async_insert` and `wait_for_async_insert` from 21.11 on.
    static let asyncInsertSince = ClickHouseVersion(major: 21, minor: 11, patch: 0)

    /// The settings of the insert of rows `chunk` of `rows`.
    ///
    /// - `async_insert = 0` where the server has the setting (it is on by default from 26.2):
    ///   the answer comes once the rows are in a part of the table, not in a buffer shared with
    ///   other clients' inserts, and the deduplication token below applies (async inserts
    ///   deduplicate by `async_insert_deduplicate`, off by default). The loader already sends
    ///   large batches, which is what async inserts would build.
    /// - `insert_deduplication_token` from 22.2 on (``LoaderRoute/dedupTokenSince``): a retry
    ///   after a lost answer resends the same rows with the same token, and the server drops it
    ///   within the table's deduplication window.
    static func settings(for version: ClickHouseVersion, chunk: Range<Int>, of rows: EncodedRows) -> [String: String] {
        var settings: [String: String] = [:]
        if version >= Self.asyncInsertSince { settings["async_insert"] = "0" }
        if version >= LoaderRoute.dedupTokenSince {
            settings["insert_deduplication_token"] = Self.token(chunk, of: rows)
        }
        return settings
    }

    /// The deduplication token of rows `chunk`: the topic, then per partition (in partition
    /// order) the first and last offset of its rows and how many rows it has — `events:0:100-159/60,1:11-50/40`.
    ///
    /// It names exactly the messages whose rows the chunk holds, whatever order a poll brought
    /// them in, so two inserts share a token only when they hold the same rows (a message that
    /// became no row — a dead letter, an erased user's event — is left out of both alike).
    static func token(_ chunk: Range<Int>, of rows: EncodedRows) -> String {
        var ranges: [Int32: (first: Int64, last: Int64, count: Int)] = [:]
        for row in chunk {
            let message = rows.message(row)
            if let range = ranges[message.partition] {
                ranges[message.partition] = (
                    min(range.first, message.offset), max(range.last, message.offset), range.count + 1
                )
            } else {
                ranges[message.partition] = (message.offset, message.offset, 1)
            }
        }
        let topic = chunk.isEmpty ? "" : rows.message(chunk.lowerBound).topic
        let parts = ranges.keys.sorted().map { partition in
            let range = ranges[partition]!
            return "\(partition):\(range.first)-\(range.last)/\(range.count)"
        }
        return topic + ":" + parts.joined(separator: ",")
    }
}
