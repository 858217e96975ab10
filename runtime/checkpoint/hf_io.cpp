#include "runtime/checkpoint/hf_io.hpp"

#include <algorithm>
#include <map>
#include <memory>

#include "models/hf_names.hpp"
#include "models/model_config.hpp"
#include "runtime/checkpoint/file_sync.hpp"
#include "runtime/checkpoint/index_file.hpp"
#include "runtime/checkpoint/safetensors.hpp"
#include "runtime/checkpoint/save_protocol.hpp"
#include "runtime/checkpoint/tensor_reader.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

namespace fs = std::filesystem;
using namespace checkpoint;

namespace {

StoredDType stored_from_safetensors(const std::string& dtype, const std::string& where) {
  if (dtype == "F32") return StoredDType::f32;
  if (dtype == "BF16") return StoredDType::bf16;
  if (dtype == "F16") return StoredDType::f16;
  throw InputError(concat(where, ": dtype ", dtype, " cannot be imported; valid: F32, BF16, F16"));
}

std::string safetensors_from_stored(StoredDType dtype) {
  switch (dtype) {
    case StoredDType::f32:
      return "F32";
    case StoredDType::bf16:
      return "BF16";
    case StoredDType::f16:
      return "F16";
  }
  return "?";
}

nlohmann::json read_json_file(const fs::path& path) {
  require(fs::is_regular_file(path), "missing ", path.string());
  try {
    return nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::parse_error& e) {
    throw InputError(concat(path.string(), ": not valid JSON (", e.what(), ")"));
  }
}

// Buffers that HF checkpoints may carry but that are not parameters.
bool is_known_buffer(const std::string& name) {
  return name.ends_with(".rotary_emb.inv_freq");
}

// Fields of an HF config that change the forward pass in ways metamorph's decoder does not
// compute (it has SwiGLU MLPs without biases, plain RoPE and full causal attention): importing
// such a model would give a checkpoint whose logits silently differ from the original's.
void require_supported_architecture(const nlohmann::json& json, const std::string& where) {
  auto string_or = [](const nlohmann::json& j, const char* key, const std::string& fallback) {
    return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : fallback;
  };
  auto is_true = [&](const char* key) {
    return json.contains(key) && json[key].is_boolean() && json[key].get<bool>();
  };
  const std::string act = string_or(json, "hidden_act", "silu");
  require(act == "silu", where, ": hidden_act '", act,
          "' cannot be imported; metamorph's MLP is SwiGLU (valid: silu)");
  require(!is_true("mlp_bias"), where,
          ": mlp_bias true cannot be imported (metamorph's MLP has no biases)");
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!json.contains(key) || !json[key].is_object()) continue;
    const std::string type =
        string_or(json[key], "rope_type", string_or(json[key], "type", "default"));
    require(type == "default", where, ": ", key, ".rope_type '", type,
            "' cannot be imported (valid: default, plain RoPE)");
  }
  // Qwen2/3 carry a window they only use with use_sliding_window; Mistral-style configs use any
  // window given. One as long as the positions never limits anything.
  const bool has_window = json.contains("sliding_window") && json["sliding_window"].is_number();
  const bool windowed =
      has_window && (json.contains("use_sliding_window") ? is_true("use_sliding_window") : true);
  const double positions =
      json.contains("max_position_embeddings") && json["max_position_embeddings"].is_number()
          ? json["max_position_embeddings"].get<double>()
          : 2048.0;
  require(!windowed || json["sliding_window"].get<double>() >= positions, where,
          ": sliding-window attention (sliding_window ",
          has_window ? json["sliding_window"].dump() : std::string(), " < max_position_embeddings ",
          positions, ") cannot be imported; metamorph attends to the whole causal prefix");
}

}  // namespace

ImportReport import_safetensors(const fs::path& hf_dir, const fs::path& out_root) {
  require(fs::is_directory(hf_dir), "import: ", hf_dir.string(),
          " is not a directory (expected config.json and *.safetensors)");
  const fs::path config_path = hf_dir / "config.json";
  const nlohmann::json config_json = read_json_file(config_path);
  ModelConfig config;
  try {
    config = model_config_from_json(config_json);
  } catch (const InputError& e) {
    throw InputError(concat(config_path.string(), ": ", e.what()));
  }
  require_supported_architecture(config_json, config_path.string());

  std::vector<fs::path> paths;
  for (const auto& entry : fs::directory_iterator(hf_dir))
    if (entry.is_regular_file() && entry.path().extension() == ".safetensors")
      paths.push_back(entry.path());
  std::sort(paths.begin(), paths.end());
  require(!paths.empty(), "import: no *.safetensors file in ", hf_dir.string());
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  struct Found {
    const SafetensorsFile* file;
    const SafetensorsTensor* tensor;
  };
  std::map<std::string, Found> found;
  for (const auto& path : paths) {
    files.push_back(std::make_unique<SafetensorsFile>(path));
    for (const auto& t : files.back()->tensors()) {
      const auto [it, inserted] = found.emplace(t.name, Found{files.back().get(), &t});
      require(inserted, "import: tensor ", t.name, " is in both ", it->second.file->path().string(),
              " and ", path.string());
    }
  }

  ImportReport report;
  std::vector<ShardView> views;
  std::vector<std::string> missing;
  const std::string model_type = config_json.value("model_type", std::string());
  for (const auto& spec : parameter_specs(config)) {
    // Stored under the architecture's own name (Mixtral: block_sparse_moe...), kept canonical.
    const std::string hf_name = hf_parameter_name(spec.name, model_type);
    const auto it = found.find(hf_name);
    if (it == found.end()) {
      missing.push_back(hf_name);
      continue;
    }
    const auto& [file, tensor] = it->second;
    const std::string where = concat(file->path().string(), ", tensor ", hf_name);
    require(tensor->shape == spec.shape, where, ": shape ", shape_string(tensor->shape), ", ",
            config_path.string(), " implies ", shape_string(spec.shape));
    const StoredDType dtype = stored_from_safetensors(tensor->dtype, where);
    views.push_back(
        {{spec.name, TensorKind::model, dtype, spec.shape, Shape(spec.shape.size(), 0), spec.shape},
         file->data(*tensor)});
    found.erase(it);
  }
  require(missing.empty(), "import: ", hf_dir.string(), " lacks ", missing.size(),
          " tensors of the model ", config_path.string(), " describes, first ",
          missing.empty() ? "" : missing.front());
  for (const auto& [name, where] : found) {
    const bool tied_head = name == "lm_head.weight" && config.tie_word_embeddings;
    require(tied_head || is_known_buffer(name), "import: ", where.file->path().string(),
            ", tensor ", name, ": not a parameter of the model ", config_path.string(),
            " describes");
    report.skipped.push_back(name);
  }

  CheckpointState state;
  state.config = config_json;
  state.extra = {{"imported_from", fs::absolute(hf_dir).string()}};
  // A block-diffusion model's [MASK] id and training options, as export writes them.
  if (config_json.contains("metamorph") && config_json["metamorph"].is_object() &&
      config_json["metamorph"].contains("diffusion")) {
    const nlohmann::json& d = config_json["metamorph"]["diffusion"];
    require(d.is_object() && d.value("mask_token", -1) >= 0 &&
                d.value("mask_token", -1) < config.vocab_size,
            config_path.string(), ": metamorph.diffusion needs a mask_token inside the vocabulary",
            " [0, ", config.vocab_size, ")");
    state.extra.update(d);
    state.extra["objective"] = "diffusion";
  }
  report.tensors = static_cast<std::int64_t>(views.size());
  report.checkpoint = save_shards(
      out_root, [&] { return views; }, state, RankContext{}, SaveOptions{});
  return report;
}

ExportReport export_safetensors(const fs::path& checkpoint, const fs::path& out_dir) {
  QuietHdf5Errors quiet;
  const fs::path dir = resolve_checkpoint(checkpoint);
  const IndexContents index = read_index_file(dir);
  std::vector<const TensorRecord*> tensors;
  std::vector<SafetensorsEntry> entries;
  const std::string model_type = index.state.config.value("model_type", std::string());
  for (const auto& t : index.tensors) {
    if (t.kind != TensorKind::model) continue;
    tensors.push_back(&t);
    entries.push_back(
        {hf_parameter_name(t.name, model_type), safetensors_from_stored(t.dtype), t.shape});
  }
  std::error_code error;
  fs::create_directories(out_dir, error);
  require(!error, "export: cannot create ", out_dir.string(), ": ", error.message());
  TensorReader reader(dir);
  ExportReport report;
  report.file = out_dir / "model.safetensors";
  write_safetensors(report.file, entries, {{"format", "pt"}},
                    [&](std::size_t i, std::vector<std::byte>& buffer) {
                      const TensorRecord& t = *tensors[i];
                      buffer.resize(t.bytes());
                      reader.read(t, Shape(t.shape.size(), 0), t.shape, t.dtype, buffer.data());
                      report.bytes += buffer.size();
                    });
  // A block-diffusion checkpoint's [MASK] id and options go under config.json's metamorph key,
  // so an import (and a decoder reading the directory) knows which vocabulary row is [MASK].
  nlohmann::json config = index.state.config;
  if (index.state.extra.value("objective", std::string()) == "diffusion") {
    nlohmann::json diffusion = nlohmann::json::object();
    for (const char* key :
         {"block_size", "mask_token", "logit_shift", "mask_schedule", "mask_beta", "ar_weight"})
      if (index.state.extra.contains(key)) diffusion[key] = index.state.extra[key];
    config["metamorph"]["diffusion"] = diffusion;
  }
  write_file_atomically(out_dir / "config.json", config.dump(2) + "\n");
  report.tensors = static_cast<std::int64_t>(tensors.size());
  return report;
}

}  // namespace metamorph
