#include <cstdio>
int main() { std::puts("rankone: under construction"); return 0; }
