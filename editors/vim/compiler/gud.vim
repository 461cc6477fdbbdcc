" Vim compiler file for gud specs (gudlang): `:make` runs `gud check` on the current file
" and fills the quickfix list with its errors and warnings (E201 shows as `error 201`).
if exists("current_compiler")
  finish
endif
let current_compiler = "gud"

if exists(":CompilerSet") != 2
  command -nargs=* CompilerSet setlocal <args>
endif

CompilerSet makeprg=gud\ check\ %:S
CompilerSet errorformat=%f:%l:%c:\ %trror[E%n]:\ %m,%f:%l:%c:\ %tarning[W%n]:\ %m,%f:\ %trror[E%n]:\ %m,%f:\ %tarning[W%n]:\ %m,%-G%.%#
