//! Standard output for the commands: a reader that goes away (`callgate schema | head`) ends
//! the command quietly instead of panicking as `println!` does on a broken pipe.

use std::fmt;
use std::io::Write;

/// Writes `args` to standard output; on a closed pipe the process ends with status 0, on
/// another write error with status 1 and a message.
pub fn write(args: fmt::Arguments<'_>, newline: bool) {
    let mut out = std::io::stdout().lock();
    let r = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    if let Err(e) = r {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("callgate: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` that ends quietly when the reader has gone.
macro_rules! outln {
    () => { $crate::out::write(format_args!(""), true) };
    ($($t:tt)*) => { $crate::out::write(format_args!($($t)*), true) };
}

/// `print!` that ends quietly when the reader has gone.
macro_rules! out {
    ($($t:tt)*) => { $crate::out::write(format_args!($($t)*), false) };
}
