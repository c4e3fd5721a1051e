//! Every file of `fuzz/corpus/<target>/` through its target: the seeds and every input a fuzzer
//! ever crashed on (`crash-*`) stay regression tests, on the stable toolchain.

use std::path::Path;

#[test]
fn every_corpus_file_passes_its_target() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let mut total = 0;
    for (name, target) in fuzz_targets::TARGETS {
        let dir = corpus.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{name}: empty corpus");
        for file in files {
            let data = std::fs::read(&file).unwrap();
            println!("{name}: {}", file.display());
            target(&data);
            total += 1;
        }
    }
    println!("{total} corpus files");
}

#[test]
fn every_target_has_a_cargo_fuzz_binary() {
    let bins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz_targets");
    for (name, _) in fuzz_targets::TARGETS {
        let bin = bins.join(format!("{name}.rs"));
        let text =
            std::fs::read_to_string(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        assert!(
            text.contains(&format!("fuzz_targets::{name}(data)")),
            "{} does not call fuzz_targets::{name}",
            bin.display()
        );
    }
}
