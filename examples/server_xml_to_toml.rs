//! Prints the tribecast TOML equivalent of a Tomcat server.xml `<Cluster>`, and lists on stderr
//! what could not be carried over.
//!
//! Run: `cargo run --example server_xml_to_toml -- path/to/server.xml > server1.toml`

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprintln!("usage: server_xml_to_toml path/to/server.xml");
        return ExitCode::from(2);
    };
    let xml = match std::fs::read_to_string(&path) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{path}: cannot read: {e}");
            return ExitCode::FAILURE;
        }
    };
    match tribecast::config_file::convert_server_xml(&xml) {
        Ok(c) => {
            print!("{}", c.toml);
            for n in &c.not_carried {
                eprintln!("not carried: {n}");
            }
            ExitCode::SUCCESS
        }
        Err(mut e) => {
            e.file = Some(path);
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
