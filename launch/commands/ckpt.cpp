// `metamorph ckpt inspect|verify|export|import|bench`: look into, check and convert checkpoints.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "launch/cli/command.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/checkpoint/hdf5_util.hpp"
#include "runtime/checkpoint/hf_io.hpp"
#include "runtime/checkpoint/index_file.hpp"
#include "runtime/checkpoint/layout.hpp"
#include "runtime/core/error.hpp"

namespace metamorph::cli {

namespace fs = std::filesystem;

namespace {

po::options_description ckpt_options() {
  po::options_description options("ckpt");
  options.add_options()("action", po::value<std::string>(),
                        "inspect, verify, export, import or bench")(
      "checkpoint", po::value<std::string>(),
      "checkpoint root or step directory (import: the Hugging Face directory; bench: a scratch "
      "directory)")("json", po::bool_switch(), "inspect/verify: print JSON")(
      "step", po::value<std::int64_t>(), "use this step instead of `latest`")(
      "model", po::value<std::string>(), "verify: also check shapes against this config.json")(
      "format", po::value<std::string>()->default_value("safetensors"),
      "export: output format (safetensors)")("out", po::value<std::string>(),
                                             "export/import: output directory")(
      "gigabytes", po::value<double>()->default_value(2.0), "bench: checkpoint size in GB")(
      "loads", po::value<int>()->default_value(1),
      "bench: load the checkpoint this many times and report the median")(
      "cold-loads", po::value<int>()->default_value(0),
      "bench: then load it this many times more, each after dropping its files from the page "
      "cache (from disk)");
  return options;
}

std::string required(const po::variables_map& vm, const char* name, const std::string& action) {
  require(vm.count(name) > 0, "ckpt ", action, ": --", name, " is required");
  return vm[name].as<std::string>();
}

fs::path checkpoint_dir(const po::variables_map& vm, const std::string& action) {
  const fs::path path = required(vm, "checkpoint", action);
  std::optional<std::int64_t> step;
  if (vm.count("step")) step = vm["step"].as<std::int64_t>();
  return resolve_checkpoint(path, step);
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  std::ostringstream out;
  out << std::fixed << std::setprecision(unit == 0 ? 0 : 1) << bytes << " " << units[unit];
  return out.str();
}

int inspect(const po::variables_map& vm) {
  const fs::path dir = checkpoint_dir(vm, "inspect");
  const auto index = checkpoint::read_index_file(dir);
  const auto& s = index.state;
  std::uint64_t total = 0, model_bytes = 0;
  nlohmann::json tensors = nlohmann::json::array();
  for (const auto& t : index.tensors) {
    total += t.bytes();
    if (t.kind == checkpoint::TensorKind::model) model_bytes += t.bytes();
    tensors.push_back({{"name", t.name},
                       {"kind", checkpoint::kind_name(t.kind)},
                       {"dtype", checkpoint::stored_dtype_name(t.dtype)},
                       {"shape", t.shape},
                       {"bytes", t.bytes()},
                       {"blocks", t.blocks.size()}});
  }
  if (vm["json"].as<bool>()) {
    nlohmann::json out = {{"path", dir.string()},
                          {"step", s.step},
                          {"tokens", s.tokens},
                          {"format_version", s.format_version},
                          {"code_version", s.code_version},
                          {"world_size", s.world_size},
                          {"config", s.config},
                          {"layout", s.layout},
                          {"data_position", s.data_position},
                          {"rng", s.rng},
                          {"extra", s.extra},
                          {"bytes", total},
                          {"tensors", tensors}};
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  std::cout << "checkpoint " << dir.string() << "\n"
            << "step " << s.step << ", tokens " << s.tokens << ", format " << s.format_version
            << ", written by metamorph " << s.code_version << " on " << s.world_size << " rank(s)\n"
            << "layout " << s.layout.dump() << "\n"
            << "config " << s.config.dump() << "\n"
            << index.tensors.size() << " tensors, " << human_bytes(static_cast<double>(total))
            << " (model weights " << human_bytes(static_cast<double>(model_bytes)) << ")\n\n";
  std::size_t width = 4;
  for (const auto& t : index.tensors) width = std::max(width, t.name.size());
  std::cout << std::left << std::setw(static_cast<int>(width)) << "name"
            << "  kind    dtype  " << std::setw(16) << "shape" << std::right << std::setw(12)
            << "bytes"
            << "  blocks\n";
  for (const auto& t : index.tensors)
    std::cout << std::left << std::setw(static_cast<int>(width)) << t.name << "  " << std::setw(6)
              << checkpoint::kind_name(t.kind) << "  " << std::setw(5)
              << checkpoint::stored_dtype_name(t.dtype) << "  " << std::setw(16)
              << shape_string(t.shape) << std::right << std::setw(12) << t.bytes() << "  "
              << t.blocks.size() << "\n";
  return 0;
}

int verify(const po::variables_map& vm) {
  const fs::path path = required(vm, "checkpoint", "verify");
  fs::path dir = path;
  std::optional<ModelConfig> expected;
  if (vm.count("model")) expected = load_model_config(vm["model"].as<std::string>());
  if (vm.count("step")) dir = resolve_checkpoint(path, vm["step"].as<std::int64_t>());
  const auto faults = verify_checkpoint(dir, expected ? &*expected : nullptr);
  if (vm["json"].as<bool>()) {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& f : faults)
      list.push_back({{"file", f.file}, {"tensor", f.tensor}, {"message", f.message}});
    std::cout << nlohmann::json{{"ok", faults.empty()}, {"faults", list}}.dump(2) << "\n";
  } else {
    for (const auto& f : faults) std::cout << "FAULT " << f.to_string() << "\n";
  }
  if (!faults.empty())
    throw CheckFailed(concat(faults.size(), " fault(s) in checkpoint ", path.string()));
  if (!vm["json"].as<bool>()) std::cout << "ok " << resolve_checkpoint(dir).string() << "\n";
  return 0;
}

int export_checkpoint(const po::variables_map& vm) {
  const fs::path dir = checkpoint_dir(vm, "export");
  const std::string format = vm["format"].as<std::string>();
  require(format == "safetensors", "ckpt export: --format ", format,
          " is not supported; valid: safetensors");
  const auto report = export_safetensors(dir, required(vm, "out", "export"));
  std::cout << "wrote " << report.file.string() << " (" << report.tensors << " tensors, "
            << human_bytes(static_cast<double>(report.bytes)) << ") and config.json\n";
  return 0;
}

int import_checkpoint(const po::variables_map& vm) {
  const auto report =
      import_safetensors(required(vm, "checkpoint", "import"), required(vm, "out", "import"));
  std::cout << "imported " << report.tensors << " tensors into " << report.checkpoint.string()
            << "\n";
  for (const auto& name : report.skipped) std::cout << "skipped " << name << "\n";
  return 0;
}

// Drops a committed (so fsync'ed and clean) step's files from the page cache: the next load
// reads the disk.
void evict_from_page_cache(const fs::path& dir) {
  for (const auto& entry : fs::directory_iterator(dir)) {
    const int fd = ::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC);
    require(fd >= 0, "ckpt bench: cannot open ", entry.path().string());
    const int error = ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
    require(error == 0, "ckpt bench: cannot drop ", entry.path().string(), " from the page cache (",
            std::strerror(error), ")");
  }
}

// Reads the rank file with plain preads into the loaded tensors' memory, one tensor's bytes after
// another, no checksum: the copy out of the page cache into the tensors that any load makes.
double time_plain_read(const fs::path& file, ParameterSet& into) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  require(fd >= 0, "ckpt bench: cannot open ", file.string());
  const auto start = std::chrono::steady_clock::now();
  off_t where = 0;
  for (auto& p : into.all()) {
    auto* to = static_cast<char*>(p.value.raw());
    std::size_t left = p.value.bytes();
    while (left > 0) {
      const ssize_t got = ::pread(fd, to, std::min<std::size_t>(left, std::size_t{4} << 20), where);
      if (got <= 0) break;
      to += got;
      left -= static_cast<std::size_t>(got);
      where += got;
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ::close(fd);
  return seconds;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// Save and load throughput of a synthetic fp32 checkpoint (64 MiB tensors), fsync included.
// Load is timed `--loads` times into the same tensors (their pages already touched, as a
// trainer's initialised parameters are) and its median reported, next to a plain read of the rank
// file into those tensors; `--cold-loads` more read the files from disk.
int bench(const po::variables_map& vm) {
  const fs::path root = required(vm, "checkpoint", "bench");
  const double gigabytes = vm["gigabytes"].as<double>();
  require(gigabytes > 0 && gigabytes <= 64, "ckpt bench: --gigabytes must be in (0, 64], got ",
          gigabytes);
  const int loads = vm["loads"].as<int>();
  require(loads >= 1 && loads <= 100, "ckpt bench: --loads must be in [1, 100], got ", loads);
  const int cold_loads = vm["cold-loads"].as<int>();
  require(cold_loads >= 0 && cold_loads <= 100,
          "ckpt bench: --cold-loads must be in [0, 100], got ", cold_loads);
  const auto total = static_cast<std::int64_t>(gigabytes * 1e9);
  const std::int64_t cols = 4096, rows_per_tensor = 4096;  // 64 MiB of fp32 each
  using clock = std::chrono::steady_clock;
  Arena arena;
  ParameterSet saved, loaded;
  std::int64_t remaining = total / 4, index = 0;
  double first_touch_s = 0;  // zero-filling the load's destinations: their page faults
  while (remaining > 0) {
    const std::int64_t rows = std::min(rows_per_tensor, (remaining + cols - 1) / cols);
    remaining -= rows * cols;
    for (ParameterSet* set : {&saved, &loaded}) {
      Parameter p;
      p.name = "bench." + std::to_string(index) + ".weight";
      p.global_shape = {rows, cols};
      p.offset = {0, 0};
      p.value = Tensor::empty({rows, cols}, DType::f32, arena);
      float* data = p.value.data<float>();
      const auto start = clock::now();
      for (std::int64_t i = 0; i < rows * cols; ++i)
        data[i] = set == &saved ? static_cast<float>(i % 9973) * 0.25f : 0.0f;
      if (set == &loaded)
        first_touch_s += std::chrono::duration<double>(clock::now() - start).count();
      set->add(std::move(p));
    }
    ++index;
  }
  double bytes = 0;
  for (const auto& p : saved.all()) bytes += static_cast<double>(p.value.bytes());
  CheckpointState state;
  state.step = 1;
  auto start = clock::now();
  const fs::path dir = save_checkpoint(root, saved, state);
  const double save_s = std::chrono::duration<double>(clock::now() - start).count();
  auto timed_loads = [&](int count, bool cold) {
    std::vector<double> times;
    for (int i = 0; i < count; ++i) {
      if (cold) evict_from_page_cache(dir);
      start = clock::now();
      load_checkpoint(dir, loaded);
      times.push_back(std::chrono::duration<double>(clock::now() - start).count());
    }
    return times;
  };
  const std::vector<double> load_times = timed_loads(loads, false);
  std::vector<double> plain_read_times;
  for (int i = 0; i < loads; ++i)
    plain_read_times.push_back(time_plain_read(dir / checkpoint::rank_file_name(0), loaded));
  const std::vector<double> cold_times = timed_loads(cold_loads, true);
  const double load_s = median(load_times);
  std::uint64_t file_bytes = 0;
  for (const auto& e : fs::directory_iterator(dir)) file_bytes += e.file_size();
  nlohmann::json result = {{"bytes", bytes},
                           {"file_bytes", file_bytes},
                           {"tensors", saved.size()},
                           {"save_s", save_s},
                           {"save_gb_per_s", bytes / save_s / 1e9},
                           {"load_s", load_s},
                           {"load_gb_per_s", bytes / load_s / 1e9},
                           {"load_s_each", load_times},
                           {"first_touch_s", first_touch_s},
                           {"plain_read_s", median(plain_read_times)},
                           {"plain_read_gb_per_s", bytes / median(plain_read_times) / 1e9},
                           {"checkpoint", dir.string()}};
  if (!cold_times.empty()) {
    const double cold_s = median(cold_times);
    result["cold_load_s"] = cold_s;
    result["cold_load_gb_per_s"] = bytes / cold_s / 1e9;
    result["cold_load_s_each"] = cold_times;
  }
  std::cout << result.dump() << "\n";
  return 0;
}

int run(const po::variables_map& vm) {
  require(vm.count("action") > 0, "ckpt: name an action: inspect, verify, export, import or bench");
  const std::string action = vm["action"].as<std::string>();
  checkpoint::QuietHdf5Errors quiet;
  if (action == "inspect") return inspect(vm);
  if (action == "verify") return verify(vm);
  if (action == "export") return export_checkpoint(vm);
  if (action == "import") return import_checkpoint(vm);
  if (action == "bench") return bench(vm);
  throw InputError(
      concat("ckpt: unknown action '", action, "'; valid: inspect, verify, export, import, bench"));
}

}  // namespace

Command ckpt_command() {
  return {"ckpt",
          "inspect, verify, export (safetensors) or import a checkpoint",
          ckpt_options,
          {"action", "checkpoint"},
          run};
}

}  // namespace metamorph::cli
