"""Running jobs: one job in its worker (runner), what a folder already holds (resume), one driver per folder, the executors."""
