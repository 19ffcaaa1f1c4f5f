//! The task service in-process, against a fake OCI runtime: event order, state transitions, exec
//! exits and what each state refuses — no root, containerd or runc needed.

use std::sync::atomic::AtomicI32;

use containerd_shim_protos::ttrpc::Code;

use super::*;
use crate::delegate::Delegate;
use crate::runc::{RuncError, RuncIo};

/// Pids no real process has (above the kernel's largest pid_max), so a stray kill hits nothing.
const FIRST_PID: i32 = 5_000_000;

/// A runtime that writes pid files and turns a kill of the init into an exit of that pid.
struct FakeRuntime {
    exits: mpsc::UnboundedSender<Exit>,
    next_pid: AtomicI32,
    inits: Mutex<HashMap<String, i32>>,
    /// When set, a pause ends the container's init, then waits here and fails: an init that
    /// dies while the driver or runc is still busy with a Pause.
    pause_kills: Mutex<Option<Arc<Notify>>>,
}

impl FakeRuntime {
    fn pid_to(&self, file: &Path) -> i32 {
        let pid = self.next_pid.fetch_add(1, Ordering::SeqCst);
        std::fs::write(file, pid.to_string()).expect("pid file");
        pid
    }
}

#[async_trait]
impl Delegate for FakeRuntime {
    async fn create(
        &self,
        id: &str,
        _: &Path,
        opts: CreateOpts<'_>,
        _: RuncIo,
    ) -> Result<(), RuncError> {
        let pid = self.pid_to(opts.pid_file);
        self.inits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.into(), pid);
        Ok(())
    }
    async fn exec(
        &self,
        _: &str,
        _: &Path,
        opts: CreateOpts<'_>,
        _: RuncIo,
    ) -> Result<(), RuncError> {
        self.pid_to(opts.pid_file);
        Ok(())
    }
    async fn start(&self, _: &str) -> Result<(), RuncError> {
        Ok(())
    }
    async fn kill(&self, id: &str, signal: u32, _: bool) -> Result<(), RuncError> {
        let pid = self
            .inits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied();
        match pid {
            Some(pid) => {
                let _ = self.exits.send(Exit {
                    pid,
                    status: 128 + signal as i32,
                });
                Ok(())
            }
            None => Err(RuncError::classify(
                "fake kill",
                "container does not exist".into(),
            )),
        }
    }
    async fn delete(&self, id: &str, _: bool) -> Result<(), RuncError> {
        self.inits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(())
    }
    async fn pause(&self, id: &str) -> Result<(), RuncError> {
        let hold = self
            .pause_kills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(hold) = hold else { return Ok(()) };
        self.kill(id, 9, false).await?;
        hold.notified().await;
        Err(RuncError::classify("fake pause", "container exited".into()))
    }
    async fn resume(&self, _: &str) -> Result<(), RuncError> {
        Ok(())
    }
    async fn update(&self, _: &str, _: Vec<u8>) -> Result<(), RuncError> {
        Ok(())
    }
    async fn ps(&self, _: &str) -> Result<Vec<u32>, RuncError> {
        Ok(Vec::new())
    }
}

struct Bench {
    svc: Arc<Service>,
    fake: Arc<FakeRuntime>,
    events: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    exits: mpsc::UnboundedSender<Exit>,
    dir: tempfile::TempDir,
}

fn ctx() -> TtrpcContext {
    TtrpcContext {
        mh: Default::default(),
        metadata: Default::default(),
        timeout_nano: 0,
    }
}

fn code(e: containerd_shim_protos::ttrpc::Error) -> Code {
    match e {
        containerd_shim_protos::ttrpc::Error::RpcStatus(s) => s.code(),
        _ => Code::OK,
    }
}

fn bench() -> Bench {
    let (publisher, events) = Publisher::sink("ns".into());
    let (exits, exit_rx) = mpsc::unbounded_channel();
    let fake = Arc::new(FakeRuntime {
        exits: exits.clone(),
        next_pid: AtomicI32::new(FIRST_PID),
        inits: Mutex::new(HashMap::new()),
        pause_kills: Mutex::new(None),
    });
    let delegate = fake.clone();
    let svc = Arc::new(Service::with_delegates(
        "ns".into(),
        publisher,
        Arc::new(Notify::new()),
        Arc::new(move |_: &Settings, _: &Path| -> Arc<dyn Delegate> { delegate.clone() }),
    ));
    tokio::spawn(svc.clone().handle_exits(exit_rx));
    Bench {
        svc,
        fake,
        events,
        exits,
        dir: tempfile::tempdir().expect("tempdir"),
    }
}

impl Bench {
    /// Creates container `id` from a minimal bundle (no rootfs mounts, no stdio, no GPU).
    async fn create(&self, id: &str) -> TtrpcResult<api::CreateTaskResponse> {
        let bundle = self.dir.path().join(id);
        std::fs::create_dir_all(&bundle).expect("bundle");
        std::fs::write(
            bundle.join("config.json"),
            r#"{"ociVersion":"1.0.2","process":{"cwd":"/","args":["true"],"user":{"uid":0,"gid":0}},"root":{"path":"rootfs"},"linux":{"namespaces":[{"type":"pid"}]}}"#,
        )
        .expect("config.json");
        let mut req = api::CreateTaskRequest::new();
        req.id = id.into();
        req.bundle = bundle.display().to_string();
        self.svc.create(&ctx(), req).await
    }

    async fn start(&self, id: &str, exec_id: &str) -> TtrpcResult<api::StartResponse> {
        let mut req = api::StartRequest::new();
        req.id = id.into();
        req.exec_id = exec_id.into();
        self.svc.start(&ctx(), req).await
    }

    async fn kill(&self, id: &str) -> TtrpcResult<api::Empty> {
        let mut req = api::KillRequest::new();
        req.id = id.into();
        req.signal = 9;
        self.svc.kill(&ctx(), req).await
    }

    async fn wait(&self, id: &str, exec_id: &str) -> TtrpcResult<api::WaitResponse> {
        let mut req = api::WaitRequest::new();
        req.id = id.into();
        req.exec_id = exec_id.into();
        self.svc.wait(&ctx(), req).await
    }

    async fn delete(&self, id: &str, exec_id: &str) -> TtrpcResult<api::DeleteResponse> {
        let mut req = api::DeleteRequest::new();
        req.id = id.into();
        req.exec_id = exec_id.into();
        self.svc.delete(&ctx(), req).await
    }

    async fn pause(&self, id: &str) -> TtrpcResult<api::Empty> {
        let mut req = api::PauseRequest::new();
        req.id = id.into();
        self.svc.pause(&ctx(), req).await
    }

    async fn status(&self, id: &str) -> Status {
        let mut req = api::StateRequest::new();
        req.id = id.into();
        let state = self.svc.state(&ctx(), req).await.expect("state");
        state.status.enum_value_or_default()
    }

    async fn exec(&self, id: &str, exec_id: &str) -> TtrpcResult<api::Empty> {
        let mut req = api::ExecProcessRequest::new();
        req.id = id.into();
        req.exec_id = exec_id.into();
        let mut any = Any::new();
        any.value = br#"{"cwd":"/","args":["true"],"user":{"uid":0,"gid":0}}"#.to_vec();
        req.spec = Some(any).into();
        self.svc.exec(&ctx(), req).await
    }

    /// The topics published so far.
    async fn topics(&mut self) -> Vec<String> {
        self.svc.publisher.flush(Duration::from_secs(5)).await;
        let mut out = Vec::new();
        while let Ok((topic, _)) = self.events.try_recv() {
            out.push(topic);
        }
        out
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_lifecycle_publishes_its_events_in_order() {
    let mut b = bench();
    let created = b.create("c1").await.expect("create");
    assert!(created.pid >= FIRST_PID as u32);
    assert_eq!(b.topics().await, ["/tasks/create"]);
    let started = b.start("c1", "").await.expect("start");
    assert_eq!(started.pid, created.pid);
    b.kill("c1").await.expect("kill");
    let waited = b.wait("c1", "").await.expect("wait");
    assert_eq!(waited.exit_status, 137);
    let deleted = b.delete("c1", "").await.expect("delete");
    assert_eq!(deleted.exit_status, 137);
    assert_eq!(
        b.topics().await,
        ["/tasks/start", "/tasks/exit", "/tasks/delete"]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_init_exit_waits_for_its_running_execs() {
    let mut b = bench();
    b.create("c2").await.expect("create");
    b.start("c2", "").await.expect("start");
    b.exec("c2", "e1").await.expect("exec");
    let exec_pid = b.start("c2", "e1").await.expect("exec start").pid as i32;
    // The init dies first: its TaskExit must not overtake the running exec's.
    b.kill("c2").await.expect("kill");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), b.wait("c2", ""))
            .await
            .is_err(),
        "the init's exit is held while an exec runs"
    );
    b.exits
        .send(Exit {
            pid: exec_pid,
            status: 3,
        })
        .expect("exit");
    assert_eq!(b.wait("c2", "e1").await.expect("exec wait").exit_status, 3);
    assert_eq!(b.wait("c2", "").await.expect("wait").exit_status, 137);
    let topics = b.topics().await;
    let exits: Vec<&String> = topics.iter().filter(|t| *t == "/tasks/exit").collect();
    assert_eq!(exits.len(), 2, "{topics:?}");
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/exit"
        ]
    );
    assert_eq!(
        b.delete("c2", "e1").await.expect("delete exec").exit_status,
        3
    );
    b.delete("c2", "").await.expect("delete");
}

#[tokio::test(flavor = "current_thread")]
async fn each_state_refuses_what_it_cannot_do() {
    let b = bench();
    // Unknown ids are NotFound.
    assert_eq!(
        code(b.start("nope", "").await.unwrap_err()),
        Code::NOT_FOUND
    );
    assert_eq!(code(b.wait("nope", "").await.unwrap_err()), Code::NOT_FOUND);
    b.create("c3").await.expect("create");
    // A second create of the same id.
    assert_eq!(
        code(b.create("c3").await.unwrap_err()),
        Code::ALREADY_EXISTS
    );
    b.start("c3", "").await.expect("start");
    // Started twice; deleted while running; an exec id reused.
    assert_eq!(
        code(b.start("c3", "").await.unwrap_err()),
        Code::FAILED_PRECONDITION
    );
    assert_eq!(
        code(b.delete("c3", "").await.unwrap_err()),
        Code::FAILED_PRECONDITION
    );
    b.exec("c3", "e").await.expect("exec");
    assert_eq!(
        code(b.exec("c3", "e").await.unwrap_err()),
        Code::ALREADY_EXISTS
    );
    // After the init exited: no new exec, no start of a created one.
    b.kill("c3").await.expect("kill");
    b.wait("c3", "").await.expect("wait");
    assert_eq!(
        code(b.exec("c3", "late").await.unwrap_err()),
        Code::FAILED_PRECONDITION
    );
    assert_eq!(
        code(b.start("c3", "e").await.unwrap_err()),
        Code::FAILED_PRECONDITION
    );
    b.delete("c3", "").await.expect("delete");
    assert_eq!(code(b.delete("c3", "").await.unwrap_err()), Code::NOT_FOUND);
}

#[tokio::test(flavor = "current_thread")]
async fn an_init_that_exits_during_a_failed_pause_stays_stopped() {
    let b = bench();
    b.create("c4").await.expect("create");
    b.start("c4", "").await.expect("start");
    let hold = Arc::new(Notify::new());
    *b.fake.pause_kills.lock().expect("lock") = Some(hold.clone());
    let svc = b.svc.clone();
    let pause = tokio::spawn(async move {
        let mut req = api::PauseRequest::new();
        req.id = "c4".into();
        svc.pause(&ctx(), req).await
    });
    // The exit is handled while the Pause is still in flight; then the Pause fails.
    assert_eq!(b.wait("c4", "").await.expect("wait").exit_status, 137);
    hold.notify_one();
    assert!(pause.await.expect("join").is_err(), "the pause failed");
    assert_eq!(b.status("c4").await, Status::STOPPED);
    // Nothing is refused afterwards: a stopped task deletes, a second pause is refused.
    assert_eq!(
        code(b.pause("c4").await.unwrap_err()),
        Code::FAILED_PRECONDITION
    );
    assert_eq!(b.delete("c4", "").await.expect("delete").exit_status, 137);
}
