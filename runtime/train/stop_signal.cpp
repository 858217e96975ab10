#include "runtime/train/stop_signal.hpp"

namespace metamorph {

namespace {
volatile std::sig_atomic_t g_received = 0;
extern "C" void record_signal(int signal) { g_received = signal; }
}  // namespace

StopSignal::StopSignal() {
  g_received = 0;
  struct sigaction action {};
  action.sa_handler = record_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, &previous_term_);
  sigaction(SIGUSR1, &action, &previous_usr1_);
}

StopSignal::~StopSignal() {
  sigaction(SIGTERM, &previous_term_, nullptr);
  sigaction(SIGUSR1, &previous_usr1_, nullptr);
}

int StopSignal::received() const { return g_received; }

}  // namespace metamorph
