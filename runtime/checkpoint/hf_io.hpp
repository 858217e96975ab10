#pragma once
// Hugging Face interchange: a directory of config.json + *.safetensors <-> a metamorph
// checkpoint. metamorph's canonical names are the HF names (Llama, Qwen2, Qwen3, Qwen2-MoE);
// Mixtral's and DeepSeek's MoE names are mapped by the config's model_type (models/hf_names).
// Otherwise a checked copy that keeps every tensor's dtype: import then export gives back the
// same bytes.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace metamorph {

struct ImportReport {
  std::filesystem::path checkpoint;  // the committed step directory
  std::int64_t tensors = 0;
  std::vector<std::string> skipped;  // present in the files but not parameters (tied lm_head...)
};

// Reads hf_dir/config.json (validated as a model config) and every hf_dir/*.safetensors into a
// step-0 checkpoint under out_root. InputError names the file and tensor of any mismatch.
ImportReport import_safetensors(const std::filesystem::path& hf_dir,
                                const std::filesystem::path& out_root);

struct ExportReport {
  std::filesystem::path file;  // out_dir/model.safetensors
  std::int64_t tensors = 0;
  std::uint64_t bytes = 0;
};

// Writes out_dir/model.safetensors (the model weights, stored dtypes) and out_dir/config.json.
ExportReport export_safetensors(const std::filesystem::path& checkpoint,
                                const std::filesystem::path& out_dir);

}  // namespace metamorph
