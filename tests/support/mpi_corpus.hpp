#pragma once
// What the multi-rank training tests share: the rank of this process, and one directory for all
// ranks holding a small byte-level corpus prepared as an indexed dataset.
#include <filesystem>
#include <functional>
#include <string>

namespace metamorph::test {

int world_rank();
int world_size();

// A fresh directory under the temp dir (named `prefix` + rank 0's pid) with `corpus.txt` prepared
// as `data` (byte tokenizer, `vocab_size`, 5% held out for validation). `populate` runs on rank 0
// after that (to write model configs); every rank returns once it is done.
std::filesystem::path shared_corpus_dir(
    const std::string& prefix, int vocab_size,
    const std::function<void(const std::filesystem::path&)>& populate = {});

}  // namespace metamorph::test
