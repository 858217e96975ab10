#pragma once
// Human- and script-facing renderings of a search: the ranked table, the why-it-wins summary,
// one layout's full breakdown, CSV.
#include <iosfwd>
#include <string>

#include "planner/search.hpp"

namespace metamorph::planner {

void print_table(std::ostream& out, const SearchResult& result, size_t top);
// Why the winner wins (against the runner-up and the best of other shapes) and what limits it.
std::string explain_winner(const SearchResult& result, const Cluster& cluster);
// Every memory term, time term and collective of one evaluated layout.
void print_breakdown(std::ostream& out, const Evaluation& evaluation, const Cluster& cluster);
void print_csv(std::ostream& out, const SearchResult& result, size_t top, bool with_refused);
// How many candidates were refused, by reason kind.
std::string refusal_summary(const SearchResult& result);

}  // namespace metamorph::planner
