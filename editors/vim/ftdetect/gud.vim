" gud specs (gudlang): *.gud files.
autocmd BufRead,BufNewFile *.gud setfiletype gud
