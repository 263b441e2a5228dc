from duet.cli.main import run

run()
