from coinfer.cli import run

run()
