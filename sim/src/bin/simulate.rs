fn main() {
    eagle_eye_sim::cli::main()
}
