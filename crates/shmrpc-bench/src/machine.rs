//! What machine a measurement ran on.

/// Facts about this machine for reports.
#[derive(Debug, Clone)]
pub struct Machine {
    /// CPUs online (`available_parallelism`).
    pub nproc: usize,
    /// `uname -r`.
    pub kernel: String,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
}

impl Machine {
    /// Reads the facts (best effort: unknown values are reported as "unknown").
    pub fn detect() -> Self {
        let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            nproc,
            kernel,
            cpu_model,
        }
    }

    /// One line for humans.
    pub fn describe(&self) -> String {
        format!(
            "{} CPUs, {}, Linux {}",
            self.nproc, self.cpu_model, self.kernel
        )
    }

    /// As JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "nproc": self.nproc,
            "kernel": self.kernel,
            "cpu_model": self.cpu_model,
        })
    }
}
