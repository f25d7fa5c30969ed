#if canImport(Glibc)
import Glibc
#endif

#if !FUZZING
import Foundation
#endif

/// Which harness a run drives: `SLUICE_FUZZ_TARGET=bodies|segments` (default: bodies).
let selectedHarness: Harness = {
    guard let name = getenv("SLUICE_FUZZ_TARGET").map({ String(cString: $0) }) else { return .bodies }
    guard let harness = Harness(rawValue: name) else {
        writeError("sluice-fuzz: SLUICE_FUZZ_TARGET=\(name) is none of \(Harness.allCases.map(\.rawValue))")
        exit(2)
    }
    return harness
}()

#if FUZZING
/// libFuzzer's driver, which runs `callback` on each input (libFuzzer's `LLVMFuzzerRunDriver`).
@_extern(c, "LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

/// The entry point when built with `-sanitize=fuzzer -D FUZZING` (scripts/fuzz). SwiftPM links
/// an executable's `main` to `<module>_main`, so the module supplies that and hands the
/// command line to libFuzzer's driver rather than relying on libFuzzer's own `main`.
@_cdecl("sluice_fuzz_main")
func fuzzingMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return runFuzzerDriver(&argc, &argv) { data, size in
        selectedHarness.run(UnsafeRawBufferPointer(start: data, count: size))
        return 0
    }
}
#else
/// Without libFuzzer: replays the files named on the command line (a corpus, or the inputs a
/// fuzzing run saved as crashes) through the harness, or writes the seed corpus
/// (`sluice-fuzz seed DIR`).
@main
enum Replay {
    static func main() async throws {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments.first == "seed", arguments.count == 2 {
            let written = try await Seeds.write(to: arguments[1])
            print("sluice-fuzz: wrote \(written) seed inputs under \(arguments[1])")
            return
        }
        var count = 0
        for path in arguments {
            for file in try inputs(at: path) {
                let bytes = try read(file)
                bytes.withUnsafeBytes { selectedHarness.run($0) }
                count += 1
            }
        }
        print("sluice-fuzz: \(count) inputs through \(selectedHarness.rawValue): no check failed")
    }

    /// The file itself, or the files in a directory.
    static func inputs(at path: String) throws -> [String] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ReplayError(description: "no such file or directory: \(path)")
        }
        guard isDirectory.boolValue else { return [path] }
        return try FileManager.default.contentsOfDirectory(atPath: path).sorted().map { path + "/" + $0 }
    }

    static func read(_ path: String) throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ReplayError(description: "cannot read \(path)")
        }
        return [UInt8](data)
    }
}

struct ReplayError: Error, CustomStringConvertible {
    var description: String
}
#endif
