import ClickHouse
import CoreMetrics
import Logging
import SluiceCore
import Synchronization

/// What a loader does beside loading: checking its routes against the server, keeping the
/// erasure record current, and retention on servers without table TTL.
extension Loader {
    /// Refuses routes this server cannot honour (a storage policy before 19.15), and says when
    /// a route's TTL falls back to dropping months (before 19.6).
    func checkRoutes(on version: ClickHouseVersion) throws(LoaderError) {
        for route in self.configuration.routes {
            if let problem = route.unsupported(on: version) { throw LoaderError(.invalidRoute, message: problem) }
        }
    }

    /// Creates the erasure record's table when missing and reads it.
    func prepareErasures(_ clickHouse: ClickHouseClient) async throws {
        try await self.erasures.prepare(clickHouse)
        _ = try await self.erasures.refresh(clickHouse)
        self.logger.info(
            "loader.erasures_loaded",
            metadata: ["table": "\(self.configuration.erasure.table)", "erased_users": "\(self.erasures.count)"]
        )
    }

    /// Counts and logs the erased users' events of a batch that were dropped: never silently,
    /// and never with the user id.
    func droppedErased(_ count: Int, route: LoaderRoute) {
        self.metrics.erased.increment(by: Int64(count))
        self.erasedMessages.add(count, ordering: .relaxed)
        self.logger.notice(
            "loader.erased_events_dropped",
            metadata: ["topic": "\(route.topic)", "table": "\(route.table)", "messages": "\(count)"]
        )
    }

    /// Runs `session` beside the maintenance loop; answers the maintenance's fatal error, if
    /// any (the session is then cancelled, which stops it like a shutdown).
    func runMaintained(
        _ session: @escaping @Sendable () async -> Void,
        clickHouse: ClickHouseClient,
        version: ClickHouseVersion
    ) async -> LoaderError? {
        let sweeps = self.configuration.routes.filter { $0.ttl != nil && version < LoaderRoute.ttlSince }
        for route in sweeps {
            self.logger.warning(
                "loader.ttl_unsupported",
                metadata: [
                    "table": "\(route.table)", "clickhouse.version": "\(version)",
                    "fallback":
                        "table TTL needs ClickHouse \(LoaderRoute.ttlSince); the loader drops whole months older than the ttl every hour instead",
                ]
            )
        }
        return await withTaskGroup(of: LoaderError?.self) { group in
            group.addTask {
                await session()
                return nil
            }
            group.addTask { await self.maintain(clickHouse, sweeps: sweeps) }
            let first = await group.next() ?? nil
            group.cancelAll()
            for await _ in group {}
            return first
        }
    }

    /// Until cancelled: reads the erasure record every ``ErasureConfiguration/refresh`` and
    /// sweeps the `sweeps` routes' expired months every hour. Answers an error that loading
    /// must not go on with (an erasure this loader cannot apply).
    private func maintain(_ clickHouse: ClickHouseClient, sweeps: [LoaderRoute]) async -> LoaderError? {
        var nextSweep = ContinuousClock.now
        while !Task.isCancelled {
            do {
                let added = try await self.erasures.refresh(clickHouse)
                if added > 0 {
                    self.logger.info(
                        "loader.erasures_refreshed",
                        metadata: ["new": "\(added)", "erased_users": "\(self.erasures.count)"]
                    )
                }
            } catch let error as LoaderError {
                self.logger.error("loader.erasure_unusable", metadata: ["error": "\(error)"])
                return error
            } catch  where !Task.isCancelled {
                self.logger.warning("loader.erasure_refresh_failed", metadata: ["error": "\(error)"])
            } catch {
                break  // shutting down: the request was cancelled
            }
            if !sweeps.isEmpty && ContinuousClock.now >= nextSweep {
                nextSweep = ContinuousClock.now + .seconds(3600)
                for route in sweeps {
                    do {
                        let dropped = try await RetentionSweep.sweep(route, clickHouse: clickHouse)
                        for partition in dropped {
                            self.logger.notice(
                                "loader.retention_dropped",
                                metadata: ["table": "\(route.table)", "partition": "\(partition)"]
                            )
                        }
                        for (table, partition) in try await ClickstreamRollups.sweep(route, clickHouse: clickHouse) {
                            self.logger.notice(
                                "loader.retention_dropped",
                                metadata: ["table": "\(table)", "partition": "\(partition)"]
                            )
                        }
                    } catch {
                        self.logger.warning(
                            "loader.retention_failed",
                            metadata: ["table": "\(route.table)", "error": "\(error)"]
                        )
                    }
                }
            }
            try? await Task.sleep(for: self.configuration.erasure.refresh)
        }
        return nil
    }
}
