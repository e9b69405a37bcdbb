module realalloc.test/gcstats

go 1.19
