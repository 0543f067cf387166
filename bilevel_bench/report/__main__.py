from bilevel_bench.report import main

main()
