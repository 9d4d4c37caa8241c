fn main() -> std::process::ExitCode {
    cloudpc::cli::main()
}
