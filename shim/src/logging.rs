//! Logging to containerd's log FIFO in logfmt (`time="…" level=info msg="…"`), which containerd copies
//! into its own log tagged with the shim. The FIFO is also made the process's stderr so that a panic
//! message reaches containerd instead of /dev/null.

use std::fmt::Write as _;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

struct Logfmt<W> {
    out: Mutex<W>,
}

#[derive(Default)]
struct Fields {
    msg: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.msg, "{value:?}");
        } else {
            let _ = write!(
                self.rest,
                " {}={}",
                field.name(),
                quote(&format!("{value:?}"))
            );
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={}", field.name(), quote(value));
        }
    }
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:".contains(c))
    {
        return s.to_string();
    }
    format!("{s:?}")
}

fn level_name(l: &Level) -> &'static str {
    match *l {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// Formats one record as a logfmt line.
pub fn format_line(level: &str, msg: &str, fields: &str) -> String {
    let now = time::OffsetDateTime::now_utc();
    let ts = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    format!("time=\"{ts}\" level={level} msg={msg:?} runtime=io.containerd.nvidia.v2{fields}\n")
}

/// When a span began and the fields it was opened with.
struct Timing {
    start: std::time::Instant,
    fields: String,
}

impl<W: Write> Logfmt<W> {
    fn write(&self, line: &str) {
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(line.as_bytes());
        }
    }
}

/// Events become lines; a span (the Create pipeline, a runc call) becomes one line when it closes,
/// at its own level, with `duration_us`: where the time of a start goes, without timers in the code.
impl<S, W> Layer<S> for Logfmt<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: Write + 'static,
{
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        self.write(&format_line(
            level_name(event.metadata().level()),
            &f.msg,
            &f.rest,
        ));
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut f = Fields::default();
        attrs.record(&mut f);
        span.extensions_mut().insert(Timing {
            start: std::time::Instant::now(),
            fields: f.rest,
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let ext = span.extensions();
        let Some(t) = ext.get::<Timing>() else { return };
        let fields = format!("{} duration_us={}", t.fields, t.start.elapsed().as_micros());
        self.write(&format_line(
            level_name(span.metadata().level()),
            span.name(),
            &fields,
        ));
    }
}

/// Parses a level name; unknown names mean `info`.
pub fn level_filter(name: &str, debug: bool) -> LevelFilter {
    if debug {
        return LevelFilter::DEBUG;
    }
    match name {
        "error" => LevelFilter::ERROR,
        "warn" | "warning" => LevelFilter::WARN,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => LevelFilter::INFO,
    }
}

/// Installs the logger writing to the bundle's `log` FIFO (cwd of the shim), dup'ed onto stderr,
/// and a panic hook that logs the panic. Without a reader on the FIFO the shim logs nowhere.
pub fn init(level: LevelFilter) {
    let file = open_log_fifo();
    if let Some(f) = &file {
        // SAFETY: dup2 onto fd 2 of an fd we own; both stay valid.
        unsafe { libc::dup2(f.as_raw_fd(), 2) };
    }
    let sink: Box<dyn Write + Send> = match file {
        Some(f) => Box::new(f),
        None => Box::new(std::io::sink()),
    };
    let layer = Logfmt {
        out: Mutex::new(sink),
    }
    .with_filter(level);
    let _ = tracing_subscriber::registry().with(layer).try_init();
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("panic: {info}");
    }));
}

fn open_log_fifo() -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking open fails at once when containerd holds no reader instead of hanging the shim.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log")
        .ok()?;
    // Writes must block rather than drop lines when the FIFO is momentarily full.
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_line_shape() {
        let l = format_line("info", "created \"x\"", " id=abc");
        assert!(l.starts_with("time=\""), "{l}");
        assert!(l.contains(" level=info msg=\"created \\\"x\\\"\""), "{l}");
        assert!(l.ends_with(" id=abc\n"), "{l}");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("abc-1"), "abc-1");
    }
}
