from gen.cli import console

console()
