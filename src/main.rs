fn main() -> std::process::ExitCode {
    glowd::cli::main()
}
