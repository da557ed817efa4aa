//! Background tasks tied to a scope.

/// A spawned task that is aborted when this handle is dropped (the scope that started it ended,
/// or unwound).
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
