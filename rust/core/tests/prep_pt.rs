//! `prep_pt` end to end with a small word-level tokenizer: blocks, counts, determinism across
//! worker counts, and no output folder after an error or a cancel.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use arrow_array::{Array, FixedSizeListArray, Int32Array, Int8Array};
use arrow_ipc::reader::StreamReader;
use ferrotune_core::{prep_pt, CoreError, PtOptions};
use serde_json::json;

const WORDS: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];

/// A word-level tokenizer: `<eos>` = 0, `<unk>` = 1, then the words from 2.
fn write_tokenizer(dir: &Path) -> PathBuf {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<eos>".into(), json!(0));
    vocab.insert("<unk>".into(), json!(1));
    for (i, word) in WORDS.iter().enumerate() {
        vocab.insert(word.to_string(), json!(i + 2));
    }
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": 0, "content": "<eos>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    let folder = dir.join("tokenizer");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(
        folder.join("tokenizer_config.json"),
        json!({"eos_token": "<eos>"}).to_string(),
    )
    .unwrap();
    folder
}

fn options(dir: &Path, input: &Path, out: &str, block_size: usize) -> PtOptions {
    PtOptions {
        block_size,
        ..PtOptions::new(
            write_tokenizer(dir),
            vec![input.to_string_lossy().into_owned()],
            dir.join(out),
        )
    }
}

/// Rows of every shard: (input_ids, attention_mask, labels, position_ids) per row.
type Row = (Vec<i32>, Vec<i8>, Vec<i32>, Vec<i32>);

fn read_rows(out: &Path) -> Vec<Row> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let mut rows = Vec::new();
    for shard in manifest["shards"].as_array().unwrap() {
        let file = std::fs::File::open(out.join(shard["file"].as_str().unwrap())).unwrap();
        for batch in StreamReader::try_new(file, None).unwrap() {
            let batch = batch.unwrap();
            let list = |name: &str| {
                batch
                    .column_by_name(name)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<FixedSizeListArray>()
                    .unwrap()
                    .clone()
            };
            let (ids, mask, labels, positions) = (
                list("input_ids"),
                list("attention_mask"),
                list("labels"),
                list("position_ids"),
            );
            for i in 0..batch.num_rows() {
                let ints = |a: &FixedSizeListArray| {
                    let v = a.value(i);
                    v.as_any()
                        .downcast_ref::<Int32Array>()
                        .unwrap()
                        .values()
                        .to_vec()
                };
                let m = mask.value(i);
                let m = m
                    .as_any()
                    .downcast_ref::<Int8Array>()
                    .unwrap()
                    .values()
                    .to_vec();
                rows.push((ints(&ids), m, ints(&labels), ints(&positions)));
            }
        }
    }
    rows
}

#[test]
fn blocks_counts_and_padding() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "a b c\n\nd e\n   \nf\n").unwrap();
    let manifest = prep_pt(
        &options(dir.path(), &input, "out", 3),
        &AtomicBool::new(false),
    )
    .unwrap();
    // Documents with EOS: [2 3 4 0] [5 6 0] [7 0] = 9 tokens → 3 blocks of 3.
    let rows = read_rows(&dir.path().join("out"));
    assert_eq!(
        rows,
        vec![
            (vec![2, 3, 4], vec![1, 1, 1], vec![2, 3, 4], vec![0, 1, 2]),
            (vec![0, 5, 6], vec![1, 1, 1], vec![0, 5, 6], vec![0, 0, 1]),
            (vec![0, 7, 0], vec![1, 1, 1], vec![0, 7, 0], vec![0, 0, 1]),
        ]
    );
    let counts = &manifest.counts;
    assert_eq!(
        (counts.read, counts.written, counts.empty, counts.rejected),
        (5, 3, 2, 0)
    );
    assert!(counts.adds_up());
    assert_eq!(manifest.tokens["documents"], 9);
    assert_eq!(manifest.stage_info["last_block"]["outcome"], "none");

    // One more token: the last block is padded with EOS (the pad fallback), labels -100.
    std::fs::write(&input, "a b c\nd e\nf g\n").unwrap();
    prep_pt(
        &options(dir.path(), &input, "padded", 3),
        &AtomicBool::new(false),
    )
    .unwrap();
    let rows = read_rows(&dir.path().join("padded"));
    assert_eq!(
        rows.last().unwrap(),
        &(
            vec![0, 0, 0],
            vec![1, 0, 0],
            vec![0, -100, -100],
            vec![0, 0, 1]
        )
    );
}

#[test]
fn identical_bytes_for_any_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    // 30k documents of varied length, enough for several chunks and shards.
    let mut text = String::new();
    for i in 0..30_000usize {
        let len = (i * 7919) % 23;
        let words: Vec<&str> = (0..len).map(|j| WORDS[(i + j) % WORDS.len()]).collect();
        text.push_str(&words.join(" "));
        text.push('\n');
    }
    std::fs::write(&input, text).unwrap();
    let mut outputs = Vec::new();
    for workers in [1, 2, 5] {
        let name = format!("out{workers}");
        let mut options = options(dir.path(), &input, &name, 61);
        options.common.workers = workers;
        options.common.shard_size = 200_000;
        let manifest = prep_pt(&options, &AtomicBool::new(false)).unwrap();
        assert!(manifest.shards.len() > 1);
        let bytes: Vec<Vec<u8>> = manifest
            .shards
            .iter()
            .map(|s| std::fs::read(dir.path().join(&name).join(&s.file)).unwrap())
            .collect();
        outputs.push(bytes);
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[0], outputs[2]);
}

#[test]
fn an_error_or_a_cancel_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"a b\"}\n{\"text\": 3}\n").unwrap();
    let err = prep_pt(
        &options(dir.path(), &input, "out", 4),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    let CoreError::Record(record) = err else {
        panic!("{err}")
    };
    assert_eq!(
        (record.line, record.reason, record.field.as_deref()),
        (2, "wrong_type", Some("text"))
    );

    std::fs::write(&input, "{\"text\": \"a b\"}\n").unwrap();
    let err = prep_pt(
        &options(dir.path(), &input, "out", 4),
        &AtomicBool::new(true),
    )
    .unwrap_err();
    assert!(matches!(err, CoreError::Cancelled), "{err}");

    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["in.jsonl", "tokenizer"]);
}

#[test]
fn skip_bad_counts_and_the_tail_can_be_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"text\": \"a b c d\"}\nnot json\n{\"body\": \"x\"}\n{\"text\": \"e\"}\n",
    )
    .unwrap();
    let mut options = PtOptions {
        last_block: ferrotune_core::pack::LastBlock::Drop,
        ..options(dir.path(), &input, "out", 4)
    };
    options.common.skip_bad = true;
    let manifest = prep_pt(&options, &AtomicBool::new(false)).unwrap();
    let counts = &manifest.counts;
    assert_eq!((counts.read, counts.written, counts.rejected), (4, 2, 2));
    assert_eq!(counts.rejected_by_reason["invalid_json"], 1);
    assert_eq!(counts.rejected_by_reason["missing_field"], 1);
    // 5 + 2 tokens → one block of 4, 3 dropped.
    assert_eq!(manifest.rows, 1);
    assert_eq!(manifest.tokens["dropped"], 3);
    let rejects = std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), 2);
}

#[test]
fn the_batch_transform_and_the_folder_writer_give_the_blocks_of_prep_pt() {
    use ferrotune_core::folder::FolderWriter;
    use ferrotune_core::pack::LastBlock;
    use ferrotune_core::reader::{DocSep, ReadOptions};
    use ferrotune_core::transform::{read_records, Transform};

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("docs.txt");
    let lines: Vec<String> = (0..40)
        .map(|i| match i % 9 {
            4 => String::new(),
            n => WORDS[..=(n % WORDS.len())].join(" ").repeat(1 + i % 3),
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let cancel = AtomicBool::new(false);
    let local = options(dir.path(), &input, "local", 7);
    let manifest = prep_pt(&local, &cancel).unwrap();
    let settings = json!({"tokenizer": local.common.tokenizer, "block_size": 7});
    let transform = Transform::new("pt", &settings.to_string()).unwrap();
    let read = ReadOptions {
        doc_sep: DocSep::Line,
        text_column: "text".into(),
    };
    for batch_rows in [1, 3, 40] {
        let (_, batches) = read_records(&input, &read, batch_rows).unwrap();
        let out = dir.path().join(format!("engine-{batch_rows}"));
        let mut writer =
            FolderWriter::blocks(&out, false, 500_000_000, 7, LastBlock::Pad, 0).unwrap();
        let mut read_total = 0;
        for batch in &batches {
            let output = transform.run(std::slice::from_ref(batch), &cancel).unwrap();
            read_total += output.manifest.counts.read;
            for rows in &output.batches {
                assert_eq!(rows.schema().field(1).name(), "file");
                writer.write(&rows.project(&[0]).unwrap()).unwrap();
            }
        }
        let skeleton = json!({"options": {"block_size": 7}, "stage_info": {}});
        let written = writer.finish(skeleton, "test", &cancel).unwrap();
        assert_eq!(read_total, manifest.counts.read);
        assert_eq!(written["rows"], json!(manifest.rows));
        assert_eq!(
            read_rows(&out),
            read_rows(&dir.path().join("local")),
            "{batch_rows}"
        );
    }
}
