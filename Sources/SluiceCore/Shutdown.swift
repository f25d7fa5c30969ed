import ServiceLifecycle

extension Task where Success == Never, Failure == Never {
    /// Cancelled, or the service group is shutting down: the moment a service's run loop
    /// stops taking new work and starts draining what it holds.
    package static var isCancelledOrShuttingDownGracefully: Bool {
        Task.isCancelled || Task.isShuttingDownGracefully
    }
}
