//! Progress reporting: a bar on a terminal, plain log lines otherwise (CI logs, `nohup`), nothing
//! when quiet. Everything goes to stderr so stdout stays clean for a summary or JSON.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a log line is written when stderr is not a terminal; `FERROTUNE_LOG_INTERVAL`
/// (seconds) overrides it.
const LOG_EVERY: Duration = Duration::from_secs(10);

fn log_interval() -> Duration {
    std::env::var("FERROTUNE_LOG_INTERVAL")
        .ok()
        .and_then(|value| value.parse::<f64>().ok())
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .map_or(LOG_EVERY, Duration::from_secs_f64)
}

enum Mode {
    Quiet,
    Bar(ProgressBar),
    Log { last: Instant, every: Duration },
}

/// Reports bytes read and tokens produced.
pub struct Progress {
    mode: Mode,
    label: String,
    total_bytes: u64,
    started: Instant,
}

impl Progress {
    pub fn new(label: &str, total_bytes: u64, quiet: bool) -> Progress {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(
                Some(total_bytes),
                ProgressDrawTarget::stderr_with_hz(4),
            );
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:20}] {binary_bytes}/{binary_total_bytes} {msg} eta {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            Mode::Bar(bar)
        } else {
            Mode::Log {
                last: Instant::now(),
                every: log_interval(),
            }
        };
        Progress {
            mode,
            label: label.to_string(),
            total_bytes,
            started: Instant::now(),
        }
    }

    /// Records that `bytes` of input have been read and `tokens` tokens produced so far.
    pub fn update(&mut self, bytes: u64, tokens: u64) {
        let rate = tokens as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        match &mut self.mode {
            Mode::Quiet => {}
            Mode::Bar(bar) => {
                bar.set_position(bytes.min(self.total_bytes));
                bar.set_message(format!(
                    "{} tok, {} tok/s",
                    human(tokens as f64),
                    human(rate)
                ));
            }
            Mode::Log { last, every } => {
                if last.elapsed() >= *every {
                    *last = Instant::now();
                    let percent = 100.0 * bytes as f64 / self.total_bytes.max(1) as f64;
                    eprintln!(
                        "[{}] {:.1}/{:.1} MB read ({percent:.0}%), {} tokens, {} tokens/s",
                        self.label,
                        bytes as f64 / 1e6,
                        self.total_bytes as f64 / 1e6,
                        human(tokens as f64),
                        human(rate)
                    );
                }
            }
        }
    }

    /// Clears the bar (the caller prints the summary).
    pub fn finish(&self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
    }
}

/// 1234567 -> "1.23M".
fn human(value: f64) -> String {
    match value {
        v if v >= 1e9 => format!("{:.2}G", v / 1e9),
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}
