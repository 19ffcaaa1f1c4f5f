//! The task service under both names containerd uses: `containerd.task.v2.Task` (containerd 1.6,
//! 1.7, and 2.x when `start` answered with a plain address) and `containerd.task.v3.Task` (what
//! containerd 2.x tools such as `ctr shim` and CRI test suites dial directly). The v3 messages are
//! the v2 messages under another package name, so one set of handlers serves both.

use std::collections::HashMap;
use std::sync::Arc;

use containerd_shim_protos::shim_async::{create_task, Task};
use containerd_shim_protos::ttrpc::r#async::Service;

/// The v2 service name.
pub const V2: &str = "containerd.task.v2.Task";
/// The v3 service name.
pub const V3: &str = "containerd.task.v3.Task";

/// ttrpc services for `task` under both API versions.
pub fn services(task: Arc<dyn Task + Send + Sync>) -> HashMap<String, Service> {
    let mut services = create_task(task.clone());
    if let Some(v3) = create_task(task).remove(V2) {
        services.insert(V3.to_string(), v3);
    }
    services
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl Task for Nothing {}

    #[test]
    fn both_versions_are_served_with_every_method() {
        let s = services(Arc::new(Nothing));
        let v2 = &s[V2];
        let v3 = &s[V3];
        assert_eq!(v2.methods.len(), 17);
        let mut a: Vec<&String> = v2.methods.keys().collect();
        let mut b: Vec<&String> = v3.methods.keys().collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }
}
