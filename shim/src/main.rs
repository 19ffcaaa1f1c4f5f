//! `containerd-shim-nvidia-v2`: containerd starts it as `start`, `delete` or serve mode.

use std::io::Write;
use std::os::fd::RawFd;
use std::sync::Arc;

use containerd_shim_nvidia_v2::{
    delete, logging, publisher::Publisher, reaper, service::Service, start, task_api,
};
use containerd_shim_protos::ttrpc::r#async::Server;

const LISTENER_FD: RawFd = 3;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-nvidia-v2: {e}");
            std::process::exit(2);
        }
    };
    if flags.version {
        println!(
            "containerd-shim-nvidia-v2:\n  Version: {}\n  Task API: v2, v3",
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    if flags.info {
        std::process::exit(info());
    }
    match flags.action.as_str() {
        "start" => match start::run(&flags) {
            Ok(addr) => {
                print!("{}", start::reply(&addr, start::parent_speaks_v3()));
                let _ = std::io::stdout().flush();
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        },
        "delete" => {
            let bundle = if flags.bundle.is_empty() {
                std::env::current_dir().unwrap_or_default()
            } else {
                flags.bundle.clone().into()
            };
            let out = delete::run(&bundle, &flags.namespace, &flags.id);
            let _ = std::io::stdout().write_all(&out);
        }
        "" => serve(flags),
        other => {
            eprintln!("containerd-shim-nvidia-v2: unknown action {other:?} (expected start, delete or none)");
            std::process::exit(2);
        }
    }
}

fn info() -> i32 {
    use containerd_shim_protos::protobuf::Message;
    use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return 1,
    };
    let mut info = RuntimeInfo::new();
    info.name = "io.containerd.nvidia.v2".into();
    let mut v = RuntimeVersion::new();
    v.version = env!("CARGO_PKG_VERSION").into();
    info.version = Some(v).into();
    let features = rt.block_on(async {
        let _ = reaper::start();
        let runc = containerd_shim_nvidia_v2::runc::Runc {
            binary: nvidia_shim_config::ShimConfig::default().runc.binary,
            root: "/run/containerd/runc".into(),
            systemd_cgroup: false,
            log: "/dev/null".into(),
        };
        runc.features().await.ok()
    });
    if let Some(f) = features {
        let mut any = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/features/Features".into();
        any.value = f;
        info.features = Some(any).into();
    }
    let _ = std::io::stdout().write_all(&info.write_to_bytes().unwrap_or_default());
    0
}

fn serve(flags: containerd_shim::Flags) {
    let level = std::env::var(start::LOG_LEVEL_ENV).unwrap_or_else(|_| "info".into());
    logging::init(logging::level_filter(&level, flags.debug));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("creating runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async move {
        let exits = match reaper::start() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("becoming subreaper: {e}");
                return 1;
            }
        };
        let publisher = Publisher::start(std::env::var("TTRPC_ADDRESS").ok(), flags.namespace.clone());
        let shutdown = Arc::new(tokio::sync::Notify::new());
        let service = Arc::new(Service::new(flags.namespace.clone(), publisher.clone(), shutdown.clone()));
        tokio::spawn(service.clone().handle_exits(exits));
        // SAFETY: fd 3 is the listening socket `start` handed over; nothing else uses it.
        let server = unsafe { Server::new().add_unix_listener(LISTENER_FD) };
        let mut server = match server {
            Ok(s) => s.register_service(task_api::services(service)),
            Err(e) => {
                tracing::error!("using listener fd 3: {e}");
                return 1;
            }
        };
        // SAFETY: mark the inherited listener close-on-exec so runc never inherits it.
        unsafe {
            let f = libc::fcntl(LISTENER_FD, libc::F_GETFD);
            libc::fcntl(LISTENER_FD, libc::F_SETFD, f | libc::FD_CLOEXEC);
        }
        if let Err(e) = server.start().await {
            tracing::error!("serving: {e}");
            return 1;
        }
        tracing::info!(pid = std::process::id(), "shim serving");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = shutdown.notified() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {
                tracing::info!("SIGTERM");
            }
        }
        let _ = server.shutdown().await;
        if !flags.socket.is_empty() {
            let _ = std::fs::remove_file(&flags.socket);
        }
        publisher.flush(std::time::Duration::from_secs(5)).await;
        tracing::info!("shim exiting");
        0
    });
    // Exit here rather than dropping the runtime: no detached task may keep the process alive.
    std::process::exit(code);
}
