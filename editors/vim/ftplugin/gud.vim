" gud specs (gudlang): comments start with `#`; `:make` runs `gud check` (compiler/gud.vim).
if exists("b:did_ftplugin")
  finish
endif
let b:did_ftplugin = 1

setlocal comments=:# commentstring=#\ %s
compiler gud
let b:undo_ftplugin = "setlocal comments< commentstring< makeprg< errorformat<"
