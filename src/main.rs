fn main() -> std::process::ExitCode {
    dbtape::cli::main()
}
