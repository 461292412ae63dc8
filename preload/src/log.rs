//! Logging to stderr with a raw write(2): never through libc's `write`, which the shim
//! intercepts (stderr may itself be a socket the shim carries).

use rdmasock_transport::config::LogLevel;

pub fn raw_stderr(msg: &[u8]) {
    let _ = rdmasock_transport::sys::write(2, msg);
}

pub fn enabled(level: LogLevel) -> bool {
    crate::state::config().log >= level && level != LogLevel::Off
}

pub fn emit(args: std::fmt::Arguments<'_>) {
    let line = format!("rdmasock[{}]: {}\n", rdmasock_transport::sys::getpid(), args);
    raw_stderr(line.as_bytes());
}

#[macro_export]
macro_rules! log_at {
    ($lvl:expr, $($arg:tt)*) => {
        if $crate::log::enabled($lvl) {
            $crate::log::emit(format_args!($($arg)*));
        }
    };
}
