import Encryption
import Foundation
import Logging
import Synchronization
@_exported import TestSupport
import Testing

@_spi(Testing) @testable import WAL

/// Settings small enough that tests fill and roll segments quickly.
func testConfiguration(_ directory: String, fileSystem: any WALFileSystem = SystemFileSystem()) -> WALConfiguration {
    var configuration = WALConfiguration(directory: directory)
    configuration.segmentBytes = 64 << 10
    configuration.maxRecordBytes = 16 << 10
    configuration.budget = DiskBudget(maxBytes: 1 << 40, minFreeBytes: 0)
    configuration.fileSystem = fileSystem
    configuration.maintenanceInterval = .milliseconds(20)
    return configuration
}

let quietLogger: Logger = {
    var logger = Logger(label: "sluice.test")
    logger.logLevel = .critical
    return logger
}()

func event(_ text: String) -> [UInt8] { Array(text.utf8) }

/// Every event in the WAL directory, by LSN, read with the operator's inspector.
func allEvents(in directory: String, keyring: Keyring? = nil) throws -> [LSN: [UInt8]] {
    var events: [LSN: [UInt8]] = [:]
    try WALInspector(directory: directory, keyring: keyring).records(from: .zero) { item in
        if case .record(let record, _, _) = item {
            for (index, event) in record.events.enumerated() { events[record.lsn + UInt64(index)] = event }
        }
        return true
    }
    return events
}
