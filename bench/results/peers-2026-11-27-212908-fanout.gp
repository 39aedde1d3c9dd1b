set terminal pngcairo size 960,540 font 'sans,10'
set output '/work/main/bench/results/peers-2026-11-27-212908-fanout.png'
set title "Fan-out 1 -> 10 subscribers: deliveries/s (median, whiskers min - max)"
set datafile missing '?'
set style data histogram
set style histogram errorbars gap 2 lw 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set key top right
set grid ytics
set yrange [0:*]
set ylabel "deliveries/s (higher is better)"
set logscale y
set yrange [*:*]
plot '/work/main/bench/results/peers-2026-11-27-212908-fanout.dat' using 2:3:4:xtic(1) title 'Amtsbote', '/work/main/bench/results/peers-2026-11-27-212908-fanout.dat' using 5:6:7 title 'NATS', '/work/main/bench/results/peers-2026-11-27-212908-fanout.dat' using 8:9:10 title 'Mosquitto'
