module oomtrace.test/leakgo

go 1.21
