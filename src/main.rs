#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    mxguard::cli::main()
}
