//! A program that uses the library as a Rust user's program does: the pretrained
//! EfficientNet-Lite0, a support folder (one sub-folder per class), and every image under
//! a query folder; prints each answer and the time taken. It keeps Rust's default (system)
//! allocator, unlike the `protonet` binary (mimalloc, see `examples/support/alloc.rs`): timing
//! it beside `protonet predict --backbone efficientnet-lite0` on the same folders measures
//! what the allocator is worth.
//!
//! ```text
//! cargo run --release --example classify_folder -- SUPPORT_DIR QUERY_DIR
//! ```

use std::time::Instant;

use protonet::data::list_images;
use protonet::{Device, FewShotClassifier};

fn main() -> protonet::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [support, query] = args.as_slice() else {
        eprintln!("usage: classify_folder SUPPORT_DIR QUERY_DIR");
        std::process::exit(2);
    };
    let start = Instant::now();
    let mut clf = FewShotClassifier::efficientnet_lite0(224, &Device::Cpu)?;
    clf.add_support_folder(support)?;
    let files = list_images(&[query.into()])?;
    for p in clf.predict_files(&files)? {
        match &p.answer {
            Ok(answer) => println!("{}\t{}\t{:.3}", p.file.display(), answer.label(), answer.confidence),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    eprintln!("{} support classes, {} queries in {:.1} s", clf.class_names().len(), files.len(), start.elapsed().as_secs_f64());
    Ok(())
}
