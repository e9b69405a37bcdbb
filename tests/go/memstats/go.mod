module realalloc.test/memstats

go 1.19
