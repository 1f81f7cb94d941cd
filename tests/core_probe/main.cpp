// Prints ferret::basis_value (csrc/ferret/core.h: the scalar definition of a basis value) for
// the (seed, g, k, j, dist) tuples read from stdin, one per line, as float bits in hex, for
// tests/test_rng.py to compare with the NumPy mirror of the contract.
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "ferret/core.h"

int main() {
  unsigned long long seed, j;
  unsigned g, k;
  int dist;
  while (std::scanf("%llu %u %u %llu %d", &seed, &g, &k, &j, &dist) == 5) {
    const float v = ferret::basis_value(seed, g, k, j, dist);
    uint32_t u;
    std::memcpy(&u, &v, 4);
    std::printf("%08" PRIx32 "\n", u);
  }
  return 0;
}
