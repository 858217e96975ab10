#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "launch/cli/command.hpp"
#include "runtime/core/error.hpp"
#include "runtime/data/data_manifest.hpp"
#include "runtime/data/document_split.hpp"
#include "runtime/data/indexed_dataset.hpp"
#include "runtime/data/prepare.hpp"
#include "runtime/data/tokenizer.hpp"

namespace metamorph::cli {

namespace {

using Clock = std::chrono::steady_clock;

std::string megabytes(std::uint64_t bytes) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(1) << static_cast<double>(bytes) / 1e6 << " MB";
  return out.str();
}

// On a terminal one line rewritten in place; in a log, a plain line every few seconds once the
// run has lasted that long, so short runs (and their error messages) stay one line.
class ProgressLine {
 public:
  ProgressLine() : terminal_(::isatty(STDERR_FILENO) == 1), last_(Clock::now()) {}

  void update(const data::PrepareProgress& p) {
    const auto now = Clock::now();
    const bool new_stage = terminal_ && p.stage != stage_;
    const auto interval =
        terminal_ ? std::chrono::milliseconds(200) : std::chrono::milliseconds(5000);
    if (!new_stage && now - last_ < interval) return;
    stage_ = p.stage;
    last_ = now;
    std::ostringstream line;
    line << "data prepare: " << p.stage << " " << megabytes(p.bytes_done);
    if (p.bytes_total > 0)
      line << " of " << megabytes(p.bytes_total) << " ("
           << 100 * p.bytes_done / std::max<std::uint64_t>(p.bytes_total, 1) << "%)";
    line << ", " << p.documents << " documents";
    if (p.tokens > 0) line << ", " << p.tokens << " tokens";
    if (terminal_) {
      std::cerr << "\r" << line.str() << "\033[K" << std::flush;
      dirty_ = true;
    } else {
      std::cerr << line.str() << "\n";
    }
  }

  void finish() {
    if (dirty_) std::cerr << "\r\033[K" << std::flush;
    dirty_ = false;
  }

 private:
  bool terminal_;
  bool dirty_ = false;
  std::string stage_;
  Clock::time_point last_;
};

po::options_description data_options() {
  po::options_description options;
  options.add_options()("action", po::value<std::string>(), "what to do: prepare | inspect")(
      "prefix", po::value<std::string>(), "inspect: the dataset prefix")(
      "input", po::value<std::string>(),
      "a text file, or a directory of them (read recursively, in sorted order)")(
      "tokenizer", po::value<std::string>(), "byte | sentencepiece")(
      "vocab", po::value<std::int32_t>(),
      "vocabulary size (byte: at least 258, default 258; sentencepiece: at least 262, default "
      "4096)")("output", po::value<std::string>(),
               "output prefix: writes PREFIX.bin, .idx, .tokenizer.json, .data.json (+ .model)")(
      "validation-fraction", po::value<double>()->default_value(0.01, "0.01"),
      "fraction of documents held out for validation, in [0, 1)")(
      "threads", po::value<int>()->default_value(2), "threads for SentencePiece training");
  return options;
}

std::string required(const po::variables_map& vm, const char* name) {
  require(vm.count(name) > 0, "data prepare: --", name,
          " is required; see 'metamorph data --help'");
  return vm[name].as<std::string>();
}

int run_prepare(const po::variables_map& vm) {
  data::PrepareOptions options;
  options.input = required(vm, "input");
  options.tokenizer = required(vm, "tokenizer");
  options.output_prefix = required(vm, "output");
  if (vm.count("vocab")) options.vocab_size = vm["vocab"].as<std::int32_t>();
  options.validation_fraction = vm["validation-fraction"].as<double>();
  options.threads = vm["threads"].as<int>();
  require(options.threads >= 1, "--threads ", options.threads, " must be at least 1");

  const auto start = Clock::now();
  ProgressLine progress;
  data::PrepareSummary summary;
  try {
    summary =
        data::prepare_dataset(options, [&](const data::PrepareProgress& p) { progress.update(p); });
  } catch (...) {
    progress.finish();
    throw;
  }
  progress.finish();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::cout << "prepared " << summary.documents << " documents (" << summary.validation_documents
            << " held out for validation), " << summary.tokens << " tokens, vocab "
            << summary.vocab_size << " (" << summary.tokenizer << ") from " << summary.files
            << (summary.files == 1 ? " file" : " files") << " in " << std::fixed
            << std::setprecision(1) << seconds << " s; wrote";
  for (std::size_t i = 0; i < summary.outputs.size(); ++i)
    std::cout << (i == 0 ? " " : ", ") << summary.outputs[i];
  std::cout << std::endl;
  return 0;
}

// Short, one-line rendering of a document for a terminal.
std::string excerpt(const std::string& text, std::size_t limit) {
  // Cut on a character boundary so the terminal never sees half a UTF-8 sequence.
  while (limit < text.size() && limit > 0 &&
         (static_cast<unsigned char>(text[limit]) & 0xC0) == 0x80)
    --limit;
  std::string out;
  for (const char c : text.substr(0, limit)) {
    if (c == '\n')
      out += "\\n";
    else if (c == '\t')
      out += "\\t";
    else
      out.push_back(c);
  }
  return text.size() > limit ? out + "..." : out;
}

std::string special_list(const data::SpecialTokens& special) {
  std::ostringstream out;
  const auto put = [&](const char* name, const std::optional<std::int32_t>& id) {
    if (id) out << (out.tellp() > 0 ? ", " : "") << name << " " << *id;
  };
  put("eos", special.eos);
  put("pad", special.pad);
  put("bos", special.bos);
  put("unk", special.unk);
  return out.str();
}

int run_inspect(const po::variables_map& vm) {
  require(vm.count("prefix") > 0, "data inspect: give the dataset prefix, e.g. 'metamorph data ",
          "inspect data/fortunes'");
  const std::string prefix = vm["prefix"].as<std::string>();
  const data::IndexedDataset dataset(prefix);
  std::cout << prefix << ": " << dataset.num_documents() << " documents, "
            << dataset.num_sequences() << " sequences, " << dataset.num_tokens() << " tokens, "
            << data::dtype_name(dataset.dtype()) << "\n";
  const double fraction = data::recorded_validation_fraction(prefix);
  if (dataset.num_documents() > 0)
    std::cout << "validation: fraction " << fraction << ", "
              << data::validation_document_count(dataset.num_documents(), fraction)
              << " documents\n";
  if (!std::filesystem::exists(data::tokenizer_path(prefix))) {
    std::cout << "tokenizer: none (no " << data::tokenizer_path(prefix) << ")\n";
    return 0;
  }
  const auto tokenizer = data::load_tokenizer(prefix);
  std::cout << "tokenizer: " << tokenizer->kind() << ", vocab " << tokenizer->vocab_size() << " ("
            << special_list(tokenizer->special_tokens()) << ")\n";
  for (std::int64_t d = 0; d < std::min<std::int64_t>(dataset.num_documents(), 3); ++d) {
    const auto ids = dataset.document(d);
    std::cout << "document " << d << " (" << ids.size()
              << " tokens): " << excerpt(tokenizer->decode(ids), 120) << "\n";
  }
  return 0;
}

}  // namespace

Command data_command() {
  return {"data",
          "prepare a text corpus for training: 'data prepare' tokenizes it into a Megatron "
          "indexed dataset; 'data inspect PREFIX' summarises one",
          data_options,
          {"action", "prefix"},
          [](const po::variables_map& vm) -> int {
            require(vm.count("action") > 0,
                    "data: give an action, e.g. 'metamorph data prepare --input FILE "
                    "--tokenizer byte --output PREFIX'; valid actions: prepare, inspect");
            const std::string action = vm["action"].as<std::string>();
            if (action == "prepare") return run_prepare(vm);
            if (action == "inspect") return run_inspect(vm);
            throw InputError(
                concat("data: unknown action '", action, "'; valid actions: prepare, inspect"));
          }};
}

}  // namespace metamorph::cli
