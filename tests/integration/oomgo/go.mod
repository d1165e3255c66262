module oomtrace.test/oomgo

go 1.21
