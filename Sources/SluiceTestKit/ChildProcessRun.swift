import Foundation
import SluiceCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

extension ChildProcess {
    /// What a command that ran to completion left behind.
    public struct Completion: Sendable {
        /// The exit status; 128 + the signal's number when a signal ended it (as a shell says).
        public var status: Int32
        public var standardOutput: String
        /// Empty with `errorsToOutput`: then the errors are in ``standardOutput``.
        public var standardError: String
        /// The command was killed because it ran past its timeout.
        public var timedOut: Bool
    }

    /// Runs `executable arguments…` to completion, off the cooperative pool; its status and
    /// output. The environment is built as for a long-running child (no `SLUICE_` variables
    /// but those in `environment`). `input` is the child's whole standard input (none: end of
    /// input at once). With `errorsToOutput`, standard error goes where standard output goes
    /// (`2>&1`, in the order written). After `timeout` the command is killed (SIGKILL) and what
    /// it wrote is returned with ``Completion/timedOut`` set.
    public static func run(
        _ executable: String,
        _ arguments: [String],
        environment: [String: String] = [:],
        currentDirectory: String? = nil,
        input: String? = nil,
        errorsToOutput: Bool = false,
        timeout: Duration = .seconds(120)
    ) async throws -> Completion {
        try await offPool {
            try Self.runBlocking(
                executable,
                arguments,
                environment: environment,
                currentDirectory: currentDirectory,
                input: input,
                errorsToOutput: errorsToOutput,
                timeout: timeout
            )
        }
    }

    /// `sluice arguments…` run to completion: ``run(_:_:environment:currentDirectory:input:errorsToOutput:timeout:)``
    /// with the built binary.
    public static func runSluice(
        _ arguments: [String],
        environment: [String: String] = [:],
        timeout: Duration = .seconds(120)
    ) async throws -> Completion {
        try await Self.run(try sluiceBinary(), arguments, environment: environment, timeout: timeout)
    }

    /// ``run(_:_:environment:currentDirectory:input:errorsToOutput:timeout:)`` on the calling
    /// thread, for where there is no `async` (an `.enabled(if:)` condition, a `deinit`). Blocks:
    /// never call it on the cooperative pool.
    ///
    /// posix_spawn and waitid rather than `Process`, with the output in files rather than pipes:
    /// a command that leaves a daemon behind (`pg_ctl start`) hands it the output descriptors,
    /// so a pipe would never reach end of file, and `Process` did not always reap such a
    /// command, leaving the test waiting forever.
    public static func runBlocking(
        _ executable: String,
        _ arguments: [String],
        environment: [String: String] = [:],
        currentDirectory: String? = nil,
        input: String? = nil,
        errorsToOutput: Bool = false,
        timeout: Duration = .seconds(120)
    ) throws -> Completion {
        let path = try Self.resolve(executable)
        let files = try TemporaryDirectory()
        let inputPath = files.path + "/stdin"
        let outputPath = files.path + "/stdout"
        let errorPath = files.path + "/stderr"
        try Data((input ?? "").utf8).write(to: URL(fileURLWithPath: inputPath))

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let currentDirectory {
            guard let chdir = Spawn.addChdir else {
                throw ChildProcessError(description: "this C library cannot set a child's directory")
            }
            _ = chdir(&actions, currentDirectory)
        }
        posix_spawn_file_actions_addopen(&actions, 0, inputPath, O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        if errorsToOutput {
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        } else {
            posix_spawn_file_actions_addopen(&actions, 2, errorPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        }
        // Nothing else of this process (sockets of in-process servers, other children's pipes)
        // leaks into the child.
        if let closeFrom = Spawn.addCloseFrom { _ = closeFrom(&actions, 3) }

        // Default dispositions and no blocked signals: this process may ignore SIGPIPE or
        // SIGTERM, and a child inherits both through exec.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attributes, &all)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let envp = Self.environment(adding: environment).map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let spawned = SpawnGate.spawning { posix_spawn(&pid, path, &actions, &attributes, argv, envp) }
        guard spawned == 0 else {
            throw ChildProcessError(description: "cannot run \(path): \(String(cString: strerror(spawned)))")
        }

        // The killer and the reaper agree under a lock: once the exit is seen (and before the
        // child is reaped, so its pid cannot be reused) the killer no longer fires.
        let state = KillState()
        let child = pid
        let killer = DispatchWorkItem {
            state.flags.withLock { state in
                guard !state.exited else { return }
                kill(child, SIGKILL)
                state.killed = true
            }
        }
        DispatchQueue.global().asyncAfter(
            deadline: .now() + .nanoseconds(Int(timeout.nanoseconds)),
            execute: killer
        )
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) < 0 {
            guard errno == EINTR else {
                throw ChildProcessError(description: "waitid failed: \(String(cString: strerror(errno)))")
            }
        }
        let timedOut = state.flags.withLock { state in
            state.exited = true
            return state.killed
        }
        killer.cancel()
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else {
                throw ChildProcessError(description: "waitpid failed: \(String(cString: strerror(errno)))")
            }
        }
        let exitStatus = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        func read(_ path: String) -> String {
            String(decoding: (try? Data(contentsOf: URL(fileURLWithPath: path))) ?? Data(), as: UTF8.self)
        }
        return Completion(
            status: exitStatus,
            standardOutput: read(outputPath),
            standardError: errorsToOutput ? "" : read(errorPath),
            timedOut: timedOut
        )
    }
}

/// Whether the timed-out child was killed, and whether its exit was seen first.
private final class KillState: Sendable {
    let flags = Mutex<(exited: Bool, killed: Bool)>((false, false))
}

/// glibc's `posix_spawn_file_actions_add…_np` extensions, which its Swift module does not
/// export (they are behind `_GNU_SOURCE`): looked up once by name.
private enum Spawn {
    typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    typealias Chdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32

    static let addCloseFrom: CloseFrom? = Self.symbol("posix_spawn_file_actions_addclosefrom_np")
    static let addChdir: Chdir? = Self.symbol("posix_spawn_file_actions_addchdir_np")

    private static func symbol<T>(_ name: String) -> T? {
        guard let pointer = dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) else { return nil }
        return unsafeBitCast(pointer, to: T.self)
    }
}
