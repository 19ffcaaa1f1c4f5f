//! Calls straight to a container's shim over ttrpc, as containerd (or a client of another task
//! API version) would, for what `ctr` cannot ask.

use std::fs;

use anyhow::{bail, Result};

use crate::Containerd;

impl Containerd {
    /// Calls the shim's Update RPC directly over ttrpc, as containerd does (ctr 1.6 cannot).
    pub fn shim_update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        use containerd_shim_protos::{api, protobuf::well_known_types::any::Any, TaskClient};
        let address = fs::read_to_string(self.bundle(id).join("address"))?;
        let client = containerd_shim_protos::Client::connect(address.trim())?;
        let task = TaskClient::new(client);
        let mut req = api::UpdateTaskRequest::new();
        req.id = id.to_string();
        let mut any = Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
        any.value = resources_json.to_vec();
        req.resources = Some(any).into();
        let mut ctx = ttrpc::context::with_timeout(20_000_000_000);
        ctx.add("containerd-namespace".into(), self.namespace.clone());
        task.update(ctx, &req)?;
        Ok(())
    }

    /// Calls `method` of the shim's task service `service` (e.g. `containerd.task.v3.Task`) for
    /// container `id` over raw ttrpc, as a client of that API version would; returns the reply.
    pub fn shim_call<R: containerd_shim_protos::protobuf::Message>(
        &self,
        id: &str,
        service: &str,
        method: &str,
        req: &impl containerd_shim_protos::protobuf::Message,
    ) -> Result<R> {
        let address = fs::read_to_string(self.bundle(id).join("address"))?;
        let client = containerd_shim_protos::Client::connect(address.trim())?;
        let mut r = ttrpc::Request::new();
        r.service = service.to_string();
        r.method = method.to_string();
        r.timeout_nano = 60_000_000_000;
        r.payload = req.write_to_bytes()?;
        let mut ns = ttrpc::proto::KeyValue::new();
        ns.key = "containerd-namespace".into();
        ns.value = self.namespace.clone();
        r.metadata.push(ns);
        let resp = client.request(r)?;
        if let Some(status) = resp.status.as_ref() {
            if status.code() != ttrpc::Code::OK {
                bail!("{service}/{method}: {:?} {}", status.code(), status.message);
            }
        }
        Ok(R::parse_from_bytes(&resp.payload)?)
    }
}
